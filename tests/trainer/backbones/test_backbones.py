import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from linewatch.trainer.backbones import BackboneWeightsError, create_classifier, create_feature_extractor  # noqa: E402


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_weights_are_real_imagenet_weights(variant: int):
    """chelsea is a tabby cat: ImageNet classes 281-285. Random weights would not say so."""
    net = create_classifier(f"tf_efficientnet_lite{variant}")
    size = net.pretrained_cfg["input_size"][-1]  # 224, 240, 260
    img = cv2.resize(skdata.chelsea(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = int(net(x).argmax())
    assert 281 <= top <= 285


def test_lite_feature_levels_share_strides():
    """Lite1 and Lite2 drop in for Lite0: the same levels give strides 8 and 16, only wider."""
    for variant, channels in ((1, [40, 112]), (2, [48, 120])):
        fx = create_feature_extractor(f"tf_efficientnet_lite{variant}", layers=(2, 3))
        feats = fx(torch.zeros(1, 3, 256, 256))
        assert [f.shape[-1] for f in feats] == [32, 16]
        assert [f.shape[1] for f in feats] == fx.channels == channels


def test_feature_extractor_levels_and_frozen():
    fx = create_feature_extractor("tf_efficientnet_lite0", layers=(2, 3))
    feats = fx(torch.zeros(1, 3, 256, 256))
    assert [f.shape[1] for f in feats] == fx.channels == [40, 112]
    assert [f.shape[-1] for f in feats] == [32, 16]
    assert not any(p.requires_grad for p in fx.parameters())
    fx.train()
    assert not fx.net.training


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_feature_extractor("resnet18", weights=tmp_path / "nope.pth")


def test_wrong_architecture_weights_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(BackboneWeightsError, match="lack"):
        create_feature_extractor("resnet18", weights=path)


def test_local_weights_file_loads(tmp_path):
    import timm

    path = tmp_path / "r18.pth"
    reference = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(reference, path)
    fx = create_feature_extractor("resnet18", weights=path)
    assert torch.equal(fx.net.state_dict()["conv1.weight"], reference["conv1.weight"])
