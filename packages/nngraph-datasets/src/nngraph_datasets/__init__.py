"""nngraph-datasets: INR model zoos — image sources, fitting, storage, published readers.

Quick start:

```python
from nngraph_datasets import load_images, fit_inrs, build_zoo, load_zoo
images, labels, ids = load_images("mnist-5k")
result = fit_inrs(images[:64])            # params [64, 1185], steps, psnr
build_zoo("zoos/mnist5k", "mnist-5k")      # or: nngraph-datasets fit --out zoos/mnist5k
splits = load_zoo("zoos/mnist5k")          # {"train": Dataset, "val": ..., "test": ...}
```
"""

from .cnn_published import convert_small_cnn_zoo, read_small_cnn_zoo
from .cnn_zoo import (
    ACTIVATIONS,
    CNN_RECIPES,
    INITIALIZERS,
    OPTIMIZERS,
    CnnRecipe,
    CnnZoo,
    build_cnn_zoo,
    default_cnn_zoo_dir,
    heldout_images,
    init_cnn_params,
    load_cnn_zoo,
    small_cnn,
    train_cnns,
    verify_cnn_zoo,
    write_cnn_zoo,
)
from .errors import (
    CorruptFileError,
    DatasetError,
    DiskFullError,
    FileTooLargeError,
    IntegrityError,
    SourceNotFoundError,
    StorageError,
    UnsafeFileError,
    ZooExistsError,
    ZooFormatError,
)
from .fit import FitResult, fit_inrs, fit_inrs_autograd
from .images import SOURCES, dilate, load_images, read_idx
from .inr import (
    BENCHMARK,
    FASHION_MNIST_BENCHMARK,
    RECIPES,
    SIREN_INIT,
    InrRecipe,
    Siren,
    grid,
    init_params,
    num_params,
    psnr,
    render,
)
from .published import Limits, convert_published, load_pth, read_published
from .stats import PUBLISHED_STD, layer_stats
from .wild_park import (
    WILD_ACTIVATIONS,
    WILD_PARK_RECIPES,
    WildCnn,
    WildCnnArch,
    WildParkRecipe,
    WildParkZoo,
    build_wild_park_zoo,
    default_wild_park_zoo_dir,
    load_wild_park_zoo,
    train_wild_cnns,
    verify_wild_park_zoo,
    wild_cnn,
    write_wild_park_zoo,
)
from .wild_park_published import convert_cnn_wild_park, read_cnn_wild_park
from .zoo import Zoo, ZooSplit, build_zoo, load_zoo, make_splits, verify_zoo, write_zoo

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BENCHMARK",
    "CNN_RECIPES",
    "FASHION_MNIST_BENCHMARK",
    "INITIALIZERS",
    "OPTIMIZERS",
    "PUBLISHED_STD",
    "RECIPES",
    "SIREN_INIT",
    "SOURCES",
    "WILD_ACTIVATIONS",
    "WILD_PARK_RECIPES",
    "CnnRecipe",
    "CnnZoo",
    "CorruptFileError",
    "DatasetError",
    "DiskFullError",
    "FileTooLargeError",
    "FitResult",
    "InrRecipe",
    "IntegrityError",
    "Limits",
    "Siren",
    "SourceNotFoundError",
    "StorageError",
    "UnsafeFileError",
    "WildCnn",
    "WildCnnArch",
    "WildParkRecipe",
    "WildParkZoo",
    "Zoo",
    "ZooExistsError",
    "ZooFormatError",
    "ZooSplit",
    "__version__",
    "build_cnn_zoo",
    "build_wild_park_zoo",
    "build_zoo",
    "convert_cnn_wild_park",
    "convert_published",
    "convert_small_cnn_zoo",
    "default_cnn_zoo_dir",
    "default_wild_park_zoo_dir",
    "dilate",
    "fit_inrs",
    "fit_inrs_autograd",
    "grid",
    "heldout_images",
    "init_cnn_params",
    "init_params",
    "layer_stats",
    "load_cnn_zoo",
    "load_images",
    "load_pth",
    "load_wild_park_zoo",
    "load_zoo",
    "make_splits",
    "num_params",
    "psnr",
    "read_cnn_wild_park",
    "read_idx",
    "read_published",
    "read_small_cnn_zoo",
    "render",
    "small_cnn",
    "train_cnns",
    "train_wild_cnns",
    "verify_cnn_zoo",
    "verify_wild_park_zoo",
    "verify_zoo",
    "wild_cnn",
    "write_cnn_zoo",
    "write_wild_park_zoo",
    "write_zoo",
]
