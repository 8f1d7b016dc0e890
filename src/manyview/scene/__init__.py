"""The data model every module speaks: cameras, sets of views, point clouds and reconstructions, and the one
resize-and-crop that moves images, cameras and pixel maps together."""

from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud
from manyview.scene.reconstruction import Reconstruction
from manyview.scene.resize import ImageTransform, apply_to_cameras, resize_cameras, resize_views
from manyview.scene.views import Views

__all__ = ["Cameras", "ImageTransform", "PointCloud", "Reconstruction", "Views", "apply_to_cameras",
           "resize_cameras", "resize_views"]
