"""The digits MLP as a class a test names with `--module digits_mlp_for_cli:DigitsMLP`
(archive --data and eval build the network from a class the user names, never from
the repository)."""

import torch


class DigitsMLP(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
