"""`MIAConfig`'s cost profiles: the budget fills in what an attack leaves unset, an explicit
option wins, and the run's pool is made in shards that are reused, not recomputed."""
import pytest
import torch

from training.defenses.mia import PROFILES, MIAConfig
from training.defenses.mia.craft import craft_pool
from training.defenses.mia.data import parse_attacks
from training.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_paper_profile_is_the_default_and_fills_in_the_budgets():
    specs = {s.name: dict(s.options) for s in MIAConfig().attack_specs()}
    assert MIAConfig().profile == "paper"
    assert specs["cw"] == {"steps": "1000", "binary_steps": "5"}
    assert specs["gma"] == {"steps": "10", "tries": "3"}
    assert specs["pgd"]["steps"] == "10" and specs["fgsm"] == {"eps": "0.1"}


def test_full_cpu_profile_and_explicit_options_win():
    config = MIAConfig(profile="full-cpu", cw_binary_steps=2, attacks="cw:steps=7,pgd:eps=0.1")
    specs = {s.name: dict(s.options) for s in config.attack_specs()}
    assert specs["cw"] == {"steps": "7", "binary_steps": "2"}           # attack string, then override
    assert specs["pgd"]["steps"] == str(PROFILES["full-cpu"].pgd_steps)  # the profile's
    assert config.epochs("eat", 99) == PROFILES["full-cpu"].eat_epochs
    assert MIAConfig().epochs("eat", 99) == 99                           # paper: --epochs
    assert MIAConfig(eat_epochs=2).epochs("eat", 99) == 2


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown profile 'fast'; known: paper, full-cpu, session-cpu"):
        MIAConfig(profile="fast")


def test_shards_are_written_once_and_reused(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = create_model("mia-target", mean=(0.286,), std=(0.353,)).eval()
    clean, attacks = fmnist_small.train.take(60), parse_attacks("fgsm:eps=0.1,pgd:eps=0.1;steps=2;alpha=0.05")
    first = craft_pool(model, clean, attacks, 60, seed=3, shard_size=8, folder=tmp_path)
    shards = sorted(tmp_path.glob("*/*.pt"))
    assert len(shards) == 2 * 4 and not list(tmp_path.glob("**/*.tmp"))  # 30 images per attack -> 4 shards
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = craft_pool(model, clean, attacks, 60, seed=3, shard_size=8, folder=tmp_path)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    in_memory = craft_pool(model, clean, attacks, 60, seed=3, shard_size=8)
    assert torch.equal(first.x, again.x) and torch.equal(first.x, in_memory.x)
