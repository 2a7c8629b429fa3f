#include "manager/torchscript/random_id.h"

#include <openssl/rand.h>

#include <random>
#include <string_view>

#include "common/digest.h"

namespace splitlearnd {

std::string UnguessableId(const char* prefix, uint64_t serial) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    std::random_device rd;
    for (auto& b : bytes) b = static_cast<unsigned char>(rd() & 0xff);
  }
  return std::string(prefix) + std::to_string(serial) + "-" +
         HexEncode(std::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
}

}  // namespace splitlearnd
