"""Paper 002 in one folder: the GMA/PGD/FGSM/CW adversarial pool, EAT, the bagged ensemble with an
"adversarial" class, its metrics, evaluation and ONNX export.

- `config`: `MIAConfig` and the cost profiles (`paper`, `full-cpu`);
- `data`: attack specs, `AdversarialSet`, the augmented set and bootstraps;
- `craft`: the adversarial images, in shards per attack; `pool`: the run's sets on disk;
- `fit`: `MIADefense` (registered as the defence `mia` by `training.defenses`); `stages`: its
  training stages, EAT cycles and members as tasks that processes claim; `helper`: a process that
  makes shards and trains stages beside a run;
- `plan`: the stages, their estimated cost here and what a run folder already holds;
- `ensemble`: `MIAEnsemble` (`mia_ensemble` is registered as the model `mia-ensemble` by
  `training.defenses`, so `load_model` rebuilds it);
- `metrics`, `eval` (`python -m training.defenses.mia.eval`), `export` (the ONNX graph) and
  `detector` (the graph into a bundle as the `mia-vote` detector's model).

`export` and `detector` are imported where used (they import `training.export`, which imports
this package back).
"""
from training.defenses.mia.config import PROFILES, Budget, MIAConfig
from training.defenses.mia.data import AdversarialSet, AttackSpec, parse_attacks
from training.defenses.mia.ensemble import MIAEnsemble, SoftEnsemble, majority_vote, mia_ensemble
from training.defenses.mia.fit import MIADefense
from training.defenses.mia.plan import plan

__all__ = ["AdversarialSet", "AttackSpec", "Budget", "MIAConfig", "MIADefense", "MIAEnsemble", "PROFILES",
           "SoftEnsemble", "majority_vote", "mia_ensemble", "parse_attacks", "plan"]
