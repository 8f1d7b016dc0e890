"""Photos -> posed photos: Fast3R's cameras moved onto the photos at their own size, and the refinement's refusal
when the initial cameras are too far off (a randomly initialised Fast3R)."""

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.io.image_writers import write_image
from manyview.io.images import load_images
from manyview.models.fast3r import Fast3R
from manyview.recon.posed_photos import fast3r_poses, fast3r_refined_poses
from manyview.recon.reconstruct import reconstruct, reconstruction_policy
from manyview.scene.resize import ImageTransform
from manyview.synth import generate

pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Fast3R("tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    _, views = generate(3, "object", 6, 96, 128, arc_deg=60.0)
    paths = [folder / f"p{i}.png" for i in range(6)]
    for path, image in zip(paths, views.images):
        write_image(path, image)
    return paths


def test_fast3r_poses_are_the_networks_cameras_at_the_photos_size(model, photos):
    posed = fast3r_poses(photos, model, size=64, progress=False)
    views = posed.views
    assert views.names == [p.name for p in photos] and (views.height, views.width) == (96, 128)
    assert posed.summary["model"] == "fast3r" and not posed.summary["undistorted"]
    # 64 px or less: square crops, as DUSt3R's small models take them
    assert posed.summary["network_image_size"] == [64, 64] == list(reconstruction_policy(64).target_size(96, 128))
    # the same forward pass, its cameras moved by the transform that made the network's images
    t = ImageTransform.fitting((96, 128), (64, 64), "center")
    loaded, transforms = load_images(photos, reconstruction_policy(64))
    assert all(tr.crop == t.crop and tr.resized_size == t.resized_size for tr in transforms)
    rec = reconstruct(loaded.images, model, progress=False)
    assert torch.allclose(t.apply(views.cameras).fxfycxcy, rec.cameras.fxfycxcy, atol=1e-4)
    assert torch.allclose(views.cameras.c2w, rec.cameras.c2w, atol=1e-5)
    assert len(posed.points) == len(rec.points) > 0


def test_refinement_refuses_cameras_too_far_off_in_one_sentence(model, photos):
    with pytest.raises(ManyviewError) as info:
        fast3r_refined_poses(photos, model, size=64, progress=False)
    message = str(info.value)
    assert message.startswith("bundle adjustment refined 0 of 6 photos, fewer than the 3")
    assert "too far off to refine" in message and "\n" not in message
