"""NAS-Bench-201 ops (Dong & Yang, ICLR 2020): ReLU-Conv-BN 1x1/3x3 beside the shared
none / skip_connect / avg_pool_3x3 of the DARTS registry (``avg_pool_3x3`` there is the plain
``count_include_pad=False`` pool that NAS-Bench-201 uses)."""

from .darts import ReLUConvBN
from .registry import register_op

NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]

register_op("nor_conv_1x1", lambda C_in, C_out, stride, affine: ReLUConvBN(C_in, C_out, 1, stride, 0, affine))
register_op("nor_conv_3x3", lambda C_in, C_out, stride, affine: ReLUConvBN(C_in, C_out, 3, stride, 1, affine))
