"""mIoU, mAcc and aAcc against confusion matrices computed by hand, and against mmsegmentation's own
recipe (per-image areas from histograms, summed over the dataset, then divided)."""

import math

import pytest
import torch

from vitlab.segmentation.metrics import confusion_matrix, per_class_table, scores

LABEL = torch.tensor([[0, 0, 1], [1, 255, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand_with_an_ignored_pixel():
    # counted (label, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the pixel labelled 255 predicted 2 is not
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert torch.equal(confusion_matrix(PRED, LABEL, 3), expected)


def test_scores_by_hand():
    result = scores(confusion_matrix(PRED, LABEL, 3))
    assert result.iou == pytest.approx([100 / 3, 200 / 3, 0.0])  # 1/(2+2-1), 2/(2+3-2), 0/(1+0-0)
    assert result.acc == pytest.approx([50.0, 100.0, 0.0])
    assert result.miou == pytest.approx(100 / 3) and result.macc == pytest.approx(50.0)
    assert result.aacc == pytest.approx(60.0) and result.pixels == 5


def test_a_class_absent_from_labels_and_predictions_is_left_out_of_the_means():
    result = scores(confusion_matrix(PRED, LABEL, 5))  # classes 3 and 4 never appear
    assert math.isnan(result.iou[3]) and math.isnan(result.acc[4])
    assert result.miou == pytest.approx(100 / 3) and result.macc == pytest.approx(50.0)


def test_a_class_predicted_but_never_labelled_counts_zero_iou_and_no_accuracy():
    result = scores(confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 0]), 4))
    assert result.iou[3] == 0.0 and math.isnan(result.acc[3])
    assert result.miou == pytest.approx(25.0)  # mean of IoU 50 (class 0) and 0 (class 3)
    assert result.macc == pytest.approx(50.0)  # class 0 only


def test_the_dataset_is_one_matrix_not_a_mean_over_images():
    first = (torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))  # (pred, label)
    second = (torch.tensor([1]), torch.tensor([1]))
    total = confusion_matrix(*first, 2) + confusion_matrix(*second, 2)
    result = scores(total)
    # summed: class 0 IoU 3/4, class 1 IoU 1/2 -> 62.5; the mean of per-image mIoUs would be (37.5 + 100) / 2
    assert result.miou == pytest.approx(62.5)
    per_image = (scores(confusion_matrix(*first, 2)).miou + scores(confusion_matrix(*second, 2)).miou) / 2
    assert per_image != pytest.approx(result.miou)


def mmseg_recipe(preds, labels, num_classes, ignore=255):
    """mmseg's intersect_and_union per image (histc areas), summed over images, then divided."""
    inter = union = pred_area = label_area = torch.zeros(num_classes, dtype=torch.float64)
    for pred, label in zip(preds, labels, strict=True):
        keep = label != ignore
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        a_i = torch.histc(hit.double(), bins=num_classes, min=0, max=num_classes - 1)
        a_p = torch.histc(pred.double(), bins=num_classes, min=0, max=num_classes - 1)
        a_l = torch.histc(label.double(), bins=num_classes, min=0, max=num_classes - 1)
        inter, pred_area, label_area = inter + a_i, pred_area + a_p, label_area + a_l
        union = union + a_p + a_l - a_i
    return inter / union * 100, inter / label_area * 100, inter.sum() / label_area.sum() * 100


def test_random_data_against_mmsegmentations_recipe():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 6, (9, 7), generator=g) for _ in range(4)]
    labels = [torch.randint(0, 7, (9, 7), generator=g) for _ in range(4)]
    labels = [torch.where(label == 6, 255, label) for label in labels]  # some pixels ignored
    labels[0][labels[0] == 5] = 255  # class 5 labelled in three images only
    total = sum(confusion_matrix(p, y, 6) for p, y in zip(preds, labels, strict=True))
    result = scores(total)
    iou, acc, aacc = mmseg_recipe(preds, labels, 6)
    assert result.iou == pytest.approx(iou.tolist()) and result.acc == pytest.approx(acc.tolist())
    assert result.miou == pytest.approx(float(iou.nanmean())) and result.aacc == pytest.approx(float(aacc))


def test_bad_labels_and_shapes_are_named():
    with pytest.raises(ValueError, match="found 3"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)


def test_the_table_names_every_class():
    table = per_class_table(scores(confusion_matrix(PRED, LABEL, 4)), ["sky", "road", "car", "cat"])
    lines = table.splitlines()
    assert lines[1].split() == ["sky", "33.33", "50.00"] and lines[4].split() == ["cat", "nan", "nan"]
    assert lines[-1].startswith("mIoU 33.33  mAcc 50.00  aAcc 60.00")
