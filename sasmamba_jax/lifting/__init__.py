"""From a detector's 2D keypoints to 3D poses: keypoint layouts, detector files, lifting, export, pictures."""
