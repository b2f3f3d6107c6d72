def test_trained_model_learns(trained_model, fmnist_small):
    from training.trainer import accuracy

    model, _ = trained_model
    assert accuracy(model, fmnist_small.test) > 0.75
