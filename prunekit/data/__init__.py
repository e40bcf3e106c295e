"""Datasets: COCO loading in any model's input form, the synthetic dataset, KITTI conversion."""
