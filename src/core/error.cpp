#include "flexquant/error.h"

namespace flexquant {

int Error::exit_code() const {
  switch (kind_) {
    case ErrorKind::Config: return 2;
    case ErrorKind::Io: return 3;
    case ErrorKind::Model: return 4;
    case ErrorKind::Numeric: return 5;
    case ErrorKind::Internal: return 70;
    case ErrorKind::Interrupted: return 130;
  }
  return 70;
}

}  // namespace flexquant
