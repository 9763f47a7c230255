"""ROS 2 node and tools for Sigma multimodal semantic segmentation."""
