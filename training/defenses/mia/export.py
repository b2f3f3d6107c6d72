"""The MIA ensemble as one ONNX graph: the members and the vote inside, three outputs.

- `logits` (N x K+1): log of the decision scores (softmax = smoothed vote shares; argmax = the
  decision, tie rule included), first so that serving's engine, which reads output 0, works;
- `votes` (N x K+1): how many members voted for each class;
- `adversarial_score` (N, `serving.guard.mia_vote.SCORE_OUTPUT`): share of members voting
  "adversarial" (the guard's detector score).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.guard.mia_vote import SCORE_OUTPUT
from training.defenses.mia.ensemble import MIAEnsemble
from training.export.onnx_export import INPUT_NAME, OPSET

# the detector score's name is serving's (the torch-free reader of the graph), defined there once
OUTPUTS = ("logits", "votes", SCORE_OUTPUT)


class MIAGraph(nn.Module):
    """The ensemble with all three outputs, for export."""

    def __init__(self, ensemble: MIAEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        votes, scores = self.ensemble.vote(x)
        logits = torch.log(scores / scores.sum(dim=1, keepdim=True))
        return logits, votes, votes[:, -1] / len(self.ensemble.members)


def export_mia_onnx(ensemble: MIAEnsemble, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Write the ensemble (eval mode) as one ONNX graph with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = MIAGraph(ensemble.eval()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.rand(2, *input_shape),), str(path), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}})
    return path


def mia_onnx_parity(ensemble: MIAEnsemble, path: Path, images: torch.Tensor) -> dict:
    """Compare PyTorch and ONNX Runtime on `images`: decisions, votes, scores."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {INPUT_NAME: images.numpy().astype(np.float32)})))
    with torch.no_grad():
        want = [t.numpy() for t in MIAGraph(ensemble.eval())(images)]
    want = dict(zip(OUTPUTS, want))
    return {
        "decisions_equal": float((got["logits"].argmax(1) == want["logits"].argmax(1)).mean()),
        "votes_equal": bool(np.array_equal(got["votes"], want["votes"])),
        "max_abs_logit_diff": float(np.abs(got["logits"] - want["logits"]).max()),
        "max_abs_score_diff": float(np.abs(got[SCORE_OUTPUT] - want[SCORE_OUTPUT]).max()),
    }
