"""An architecture importable by `modelhub archive --module` in tests."""

import torch


class DigitsMLP(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
