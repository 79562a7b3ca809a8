// Image folder entries (src/data/images.cpp, stb_image): load_image_folder on a folder holding one class with one
// image (PNG, JPEG or BMP, by its magic), resized and cropped as --resize 40 --crop 32 would.
#include "flexquant/datasets.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  const char* ext = s.rfind("\x89PNG", 0) == 0 ? ".png" : s.rfind("BM", 0) == 0 ? ".bmp" : ".jpg";
  std::error_code ec;
  std::filesystem::remove_all(fqfuzz::scratch() / "images", ec);
  fqfuzz::write_file(std::string("images/cat/0") + ext, s);
  flexquant::ImagePreprocess p;
  p.resize = 40;
  p.crop = 32;
  fqfuzz::run([&] { flexquant::load_image_folder((fqfuzz::scratch() / "images").string(), p); });
  fqfuzz::run([&] { flexquant::load_image_folder((fqfuzz::scratch() / "images").string()); });
  return 0;
}
