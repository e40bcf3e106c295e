"""Datasets: COCO loading with letterbox, the synthetic dataset, KITTI conversion."""
