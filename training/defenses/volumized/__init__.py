"""`volumized`: paper 004's volumized 3D CNN, one folder (ART's habit for a multi-file method).

- `volumizer`: images -> volumes of ranked slices (`Volumizer`, `VolumizerConfig`);
- `metrics`: the slice-ranking metrics (entropy, mutual information, ...);
- `model`: the 3D CNN built from a registered 2D model (`VolumetricNet`, `volumetric`, PAL loss);
- `curriculum`: the syllabus that orders each epoch's samples;
- `fit`: the defence (`VolumizedDefense`), trained through `advguard train --defense volumized`;
- `eval`: paper 004's localized-attack comparison (`python -m training.defenses.volumized.eval`).

`training.defenses` registers the defence (`volumized`) and its model (`volumetric`).
"""
from training.defenses.volumized.fit import VolumizedConfig, VolumizedDefense
from training.defenses.volumized.model import VolumetricNet, volumetric

__all__ = ["VolumetricNet", "VolumizedConfig", "VolumizedDefense", "volumetric"]
