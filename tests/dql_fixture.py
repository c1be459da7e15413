"""The repository the DQL examples run on (docs/DQL.md, tests/test_dql.py): LeNet-like
and AlexNet-like networks written without torchvision, with metrics, hparams, tags and
a fine-tune lineage. Weights are random (seeded); the queries never read them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from modelhub_torch import Repository


class LeNet(nn.Module):
    """Modules only: conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2 -> fc1..fc3."""

    def __init__(self, pool: str = "max") -> None:
        super().__init__()
        Pool = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 6, 5), nn.ReLU(), Pool(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(6, 16, 5), nn.ReLU(), Pool(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(16 * 4 * 4, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc3(self.relu4(self.fc2(x)))


class AlexNetLike(nn.Module):
    """Written the ordinary way (functional ReLUs, torch.flatten, a dropout used twice):
    conv1, conv3 and conv5 are followed directly by a pooling layer."""

    def __init__(self, pool: str = "max", width: int = 8) -> None:
        super().__init__()
        Pool = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        w = width
        self.conv1 = nn.Conv2d(3, w, 5, stride=2, padding=2)
        self.pool1 = Pool(2)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1)
        self.pool3 = Pool(2)
        self.conv4 = nn.Conv2d(4 * w, 4 * w, 3, padding=1)
        self.conv5 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)
        self.pool5 = Pool(2)
        self.fc6 = nn.Linear(2 * w * 2 * 2, 64)
        self.fc7 = nn.Linear(64, 64)
        self.fc8 = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.pool1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.relu(self.pool3(self.conv3(x)))
        x = F.relu(self.conv4(x))
        x = F.relu(self.pool5(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)


class LeNetDigits(nn.Module):
    """A LeNet for 8x8 digits (evaluate's tests train it): two convs, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def build(path) -> Repository:
    """alexnet_a v1-v3 (max pools, v3 tagged best), alexnet_b v1 (avg pools),
    lenet_max v1-v2, lenet_avg v1, and alexnet_ft v1-v2 fine-tuned from alexnet_a@v3."""
    torch.manual_seed(0)
    repo = Repository.init(path)
    sgd = {"lr": 0.01, "optimizer": "sgd", "batch_size": 128}
    for acc, msg in ((0.52, "first run"), (0.61, "more epochs"), (0.66, "lr decay")):
        repo.commit(AlexNetLike("max"), "alexnet_a", metrics={"val_acc": acc, "val_loss": 2.0 - 2 * acc},
                    hparams=sgd, message=msg)
    repo.tag("alexnet_a@v3", "best")
    repo.commit(AlexNetLike("avg"), "alexnet_b", metrics={"val_acc": 0.55, "val_loss": 0.95},
                hparams={"lr": 0.001, "optimizer": "adam", "batch_size": 64}, message="average pooling")
    repo.commit(LeNet("max"), "lenet_max", metrics={"val_acc": 0.91}, hparams={"lr": 0.01, "optimizer": "sgd"})
    repo.commit(LeNet("max"), "lenet_max", metrics={"val_acc": 0.95}, hparams={"lr": 0.01, "optimizer": "sgd"},
                message="augmentation")
    repo.commit(LeNet("avg"), "lenet_avg", metrics={"val_acc": 0.89, "note": "baseline"}, hparams={"lr": 0.1})
    repo.copy("alexnet_a@best", "alexnet_ft", message="fine-tune start")
    repo.commit(AlexNetLike("max"), "alexnet_ft", metrics={"val_acc": 0.70, "val_loss": 0.55},
                hparams={**sgd, "lr": 0.001}, message="fine-tuned on new data")
    return repo
