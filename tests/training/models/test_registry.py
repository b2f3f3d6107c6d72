import pytest
import torch

from training.models import Normalize, count_parameters, create_model


def test_mnist_base_has_paper_parameter_count():
    assert count_parameters(create_model("mnist-base")) == 120_042


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match="unknown model 'resnet9000'; known: .*mnist-base"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", ["mnist-base", "mnist-shallow", "mnist-dense", "distill-cnn",
                                  "mia-target", "eat1", "eat2", "eat3", "fmnist-cnn"])
def test_papers_models_take_28x28_and_normalize_first(name):
    model = create_model(name, num_classes=11 if name.startswith("eat") else 10)
    assert isinstance(next(iter(model.children())), Normalize)
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 11 if name.startswith("eat") else 10)


def test_torchvision_by_name_random_weights_and_user_file(tmp_path):
    model = create_model("tv-resnet18", num_classes=5, in_channels=3, image_size=32,
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    weights = tmp_path / "resnet18.pt"
    torch.save(model[1].state_dict(), weights)
    loaded = create_model("tv-resnet18", num_classes=5, in_channels=3, image_size=32,
                          mean=(0.5,) * 3, std=(0.25,) * 3, options={"weights_path": str(weights)})
    x = torch.rand(2, 3, 32, 32)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_missing_weights_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .* not found"):
        create_model("tv-alexnet", in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3,
                     options={"weights_path": str(tmp_path / "nope.pt")})
