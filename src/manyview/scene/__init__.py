"""The data model every module speaks: cameras, sets of views, point clouds and reconstructions."""

from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud
from manyview.scene.reconstruction import Reconstruction
from manyview.scene.views import Views

__all__ = ["Cameras", "PointCloud", "Reconstruction", "Views"]
