"""Build dnas_fast and, when torch's C++ toolchain is usable, the ``dnas_fast._C`` extension from csrc/.

CPU kernels (csrc/cpu/*.cpp, csrc/*.cpp) always; CUDA kernels (csrc/cuda/*.cu) whenever nvcc is found,
torch is a CUDA build and ``DNAS_FAST_NO_CUDA`` is unset. ``DNAS_FAST_NO_EXT=1`` skips the extension
(the package then runs on its reference and triton backends).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def extensions():
    if os.environ.get("DNAS_FAST_NO_EXT"):
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        # pip's build isolation hides the installed torch: say so instead of silently building nothing
        print(
            "\n*** dnas_fast: torch is not importable in this build environment, so the C++/CUDA extension "
            "dnas_fast._C is NOT built (the package will run on its PyTorch backends). Install torch first, then "
            "`pip install --no-build-isolation .` ***\n",
            file=sys.stderr,
        )
        return [], {}
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and shutil.which("nvcc") is not None
        and not os.environ.get("DNAS_FAST_NO_CUDA")
    )
    cxx = ["-O3", "-fopenmp"]  # torch picks the C++ standard its headers need
    kwargs = dict(name="dnas_fast._C", include_dirs=[os.path.abspath("csrc")], extra_link_args=["-fopenmp"])
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            sources=sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="dnas_fast",
    version="0.1.0",
    description="Fused mixed-op kernels and strategies for differentiable neural architecture search",
    # triton_kernels/ installs inside our namespace: a top-level ``triton_kernels`` is Triton's own package
    packages=[*find_packages(include=["dnas_fast", "dnas_fast.*"]), "dnas_fast.triton_kernels"],
    package_dir={"dnas_fast.triton_kernels": "triton_kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "tqdm", "matplotlib", "scikit-learn"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "ruff", "ninja", "pybind11"],
    },
    entry_points={"console_scripts": ["dnas-fast=dnas_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
