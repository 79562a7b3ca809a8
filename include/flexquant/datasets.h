// Image-classification datasets: CIFAR-10 binary records, Fashion-MNIST IDX files, disjoint
// calibration/evaluation splits and the "<scheme>:<path>" dataset spec used by the CLI.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace flexquant {

/// Per-channel input normalisation x' = (x/255 - mean[c]) / std[c].
struct Normalization {
  std::vector<double> mean;  ///< one per channel, in [0, 1]
  std::vector<double> std;   ///< one per channel, > 0

  /// CIFAR-10 ResNets of ../shared/data/cifar10 (README): mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
  static Normalization cifar10();
  /// Fashion-MNIST training-set statistics: mean 0.2860, std 0.3530.
  static Normalization fashion_mnist();
  /// No normalisation: pixels in [0, 1].
  static Normalization identity(int channels);
};

/// A labelled image set held in memory.
struct ImageDataset {
  std::string name;       ///< "cifar10", "fashion-mnist", "images" or "npy"
  std::string source;     ///< where it came from (files), for reports
  torch::Tensor images;   ///< float32 [N, C, H, W], normalised
  torch::Tensor labels;   ///< int64 [N], in [0, num_classes)
  int64_t num_classes = 10;
  int64_t first_record = 0;  ///< index of images[0] in the source (non-zero for a split's later part)

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  /// Records [begin, end) of this set (views, no copy). ConfigError if the range is out of bounds.
  ImageDataset slice(int64_t begin, int64_t end) const;
};

/// Reads CIFAR-10 binary records (<1 label byte><1024 R><1024 G><1024 B>, 32x32 row-major) from one
/// file or a directory. A directory must hold cifar10_test_*.bin (this project's test set, read in name
/// order) or the standard test_batch.bin. Throws IoError naming the file for a missing file, a size that
/// is not a multiple of 3073 bytes, or a label outside 0..9.
ImageDataset load_cifar10(const std::string& dir_or_file, const Normalization& norm = Normalization::cifar10());
/// The same for an explicit list of record files, concatenated in the given order.
ImageDataset load_cifar10(const std::vector<std::string>& files, const Normalization& norm = Normalization::cifar10());

/// Reads Fashion-MNIST IDX files (gzipped or plain) from `dir`: `split` "test" (t10k-*, 10,000 images)
/// or "train" (train-*, 60,000). Images are [N, 1, 28, 28]. Throws IoError naming the file for a
/// missing file, a bad magic number, wrong dimensions, truncation or image/label count mismatch;
/// ConfigError for an unknown split.
ImageDataset load_fashion_mnist(const std::string& dir, const std::string& split = "test",
                                const Normalization& norm = Normalization::fashion_mnist());

/// Disjoint calibration / evaluation parts of one dataset.
struct DatasetSplit {
  ImageDataset calibration;
  ImageDataset evaluation;
  /// e.g. "calibration: records 0-1023 (1024), evaluation: records 1024-9999 (8976)"
  std::string description;
};

/// The first `calibration_count` records (default 1024, range 1..size-1) for calibration, the rest for
/// evaluation: disjoint by construction. ConfigError if the count is out of range.
DatasetSplit split_calibration(const ImageDataset& data, int64_t calibration_count = 1024);

/// How raw pixels become model inputs, for image folders and uint8 .npy arrays (and the normalisation of
/// CIFAR-10 / Fashion-MNIST when given): resize the shorter side (bilinear, antialiased), centre-crop, put the
/// channels in `channel_order`, then x' = (x * scale - mean[c]) / std[c].
struct ImagePreprocess {
  int64_t resize = 0;   ///< shorter side to this many pixels; 0 = keep
  int64_t crop = 0;     ///< centre crop to crop x crop; 0 = none
  double scale = 1.0 / 255;
  std::optional<Normalization> norm;  ///< unset: the dataset's own (CIFAR-10/image folders: ImageNet's; Fashion-MNIST: its own)
  std::string channel_order = "rgb";  ///< "rgb" | "bgr" (the model's expected order)
  bool is_default() const { return resize == 0 && crop == 0 && scale == 1.0 / 255 && !norm && channel_order == "rgb"; }
};

/// An image folder, one subfolder per class (classes in name order are labels 0..K-1; torchvision's
/// ImageFolder convention), PNG / JPEG / BMP files decoded with stb_image (Debian libstb-dev). Records interleave
/// the classes (record i is the (i / K)-th file of class i % K while every class has files left), so any prefix used
/// for calibration mixes the classes. IoError naming the file for an unreadable image; ConfigError when images
/// differ in size and no --resize/--crop makes them equal.
ImageDataset load_image_folder(const std::string& dir, const ImagePreprocess& p = {});

/// A NumPy .npy array (little-endian f4/f8/u1/i1/i4/i8, C order) as a tensor. IoError naming the file for a bad
/// magic, header or dtype, or a size that does not match the file.
torch::Tensor load_npy(const std::string& path);
/// Images from .npy: float [N, C, H, W] already preprocessed (used as they are), or uint8 [N, H, W, C] / [N, C, H, W]
/// (C in {1, 3}) preprocessed with `p`; labels from a .npy of integers or a text file with one integer per line.
ImageDataset load_npy_images(const std::string& images, const std::string& labels, const ImagePreprocess& p = {});

/// A parsed dataset spec "<scheme>:<path>".
struct DatasetSpec {
  std::string scheme;  ///< "cifar10", "fashion-mnist", "images" or "npy"
  std::string path;    ///< directory (cifar10: or a single record file; npy: "<images.npy>,<labels>")
};

/// Valid dataset schemes, for help texts.
std::vector<std::string> dataset_schemes();
/// Parses "cifar10:<dir>" / "fashion-mnist:<dir>" / "images:<dir>" / "npy:<images.npy>[,<labels>]" (labels default:
/// labels.npy or labels.txt beside the images). ConfigError listing the valid schemes otherwise.
DatasetSpec parse_dataset_spec(const std::string& spec);
/// Parses and loads a spec (Fashion-MNIST: the test split). CIFAR-10 and Fashion-MNIST take only `p.norm` (their
/// images have one size); ConfigError for other preprocessing on them.
ImageDataset load_dataset(const std::string& spec, const ImagePreprocess& p = {});

}  // namespace flexquant
