"""Sliding-window inference against a naive per-crop loop written as mmseg's slide_inference, and
flip / multi-scale test-time augmentation against views computed by hand."""

import pytest
import torch
import torch.nn.functional as F

from tests.segmentation.toy import ToySegmenter
from vitlab.segmentation.inference import crop_boxes, segment, slide_logits


def model(classes: int = 4) -> ToySegmenter:
    torch.manual_seed(0)
    return ToySegmenter(num_classes=classes, width=8).eval().double()


def mmseg_slide(net, image, crop, stride, classes):
    """mmseg 1.x `slide_inference`, one crop at a time: F.pad of each crop's logits, a count matrix."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    batch, _, h_img, w_img = image.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = image.new_zeros((batch, classes, h_img, w_img))
    count_mat = image.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_logit = net(image[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    return preds / count_mat


@pytest.mark.parametrize(
    "size, crop, stride", [((37, 53), (16, 16), (11, 11)), ((20, 30), (12, 20), (5, 7)), ((10, 12), (16, 16), (8, 8))]
)
def test_slide_equals_the_naive_per_crop_loop(size, crop, stride):
    net = model()
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = slide_logits(net, x, crop, stride, batch_size=5)
        reference = mmseg_slide(net, x, crop, stride, 4)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    if size[0] > crop[0]:  # the crops see less context than the whole image: slide differs from whole
        assert not torch.allclose(ours, net(x))


def test_crops_are_batched_not_run_one_by_one():
    net = model()
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    boxes = crop_boxes(40, 40, (16, 16), (8, 8))  # 4 x 4 crops of each of 2 images
    with torch.no_grad():
        slide_logits(net, x, (16, 16), (8, 8), batch_size=12)
    assert len(boxes) == 16 and calls == [12, 12, 8]


def test_crop_boxes_end_at_the_border_and_cover_the_image():
    boxes = crop_boxes(37, 53, (16, 16), (11, 11))
    assert boxes[0] == (0, 16, 0, 16) and boxes[-1] == (21, 37, 37, 53)
    covered = torch.zeros(37, 53)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (16, 16)
        covered[y1:y2, x1:x2] = 1
    assert covered.all()
    assert crop_boxes(10, 12, (16, 16), (8, 8)) == [(0, 10, 0, 12)]  # smaller than the crop: the whole image


def test_flip_and_scales_average_the_probabilities_of_each_view():
    net = model()
    x = torch.randn(1, 3, 24, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = (30, 26)
    with torch.no_grad():
        ours = segment(net, x, out, flip=True, scales=(1.0, 0.5))
        views = []
        for scale in (1.0, 0.5):
            xs = x if scale == 1.0 else F.interpolate(x, size=(12, 10), mode="bilinear", align_corners=False)
            for flipped in (False, True):
                logits = net(xs.flip(-1)) if flipped else net(xs)
                probs = F.interpolate(logits, size=out, mode="bilinear", align_corners=False).softmax(1)
                views.append(probs.flip(-1) if flipped else probs)
        expected = torch.stack(views).mean(0)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=1e-7)
    plain = segment(net, x, out)
    assert not torch.allclose(plain, ours, atol=1e-4)


def test_slide_without_a_crop_is_refused():
    with pytest.raises(ValueError, match="crop size and a stride"):
        segment(model(), torch.zeros(1, 3, 8, 8), (8, 8), mode="slide")
