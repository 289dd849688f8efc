"""Batched image operations: letterbox, normalize, crop and warp.

``cpu`` works on numpy arrays with OpenCV; ``gpu`` does the same on torch tensors with kornia
(imported only when a GPU path is used); ``warp`` holds the affine crop warps both share.
"""
