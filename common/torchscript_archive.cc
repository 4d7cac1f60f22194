#include "common/torchscript_archive.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "common/errors.h"

namespace fedtl::common {
namespace {

[[noreturn]] void refuse(const std::string& why) { throw ModelError("backbone refused: " + why); }

uint64_t le(const std::string& s, size_t off, int n) {
  if (off + static_cast<size_t>(n) > s.size()) refuse("the archive is truncated (a zip record runs past its end)");
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[off + i])) << (8 * i);
  return v;
}

// Inflates a raw deflate stream, refusing more than `cap` bytes of output.
std::string inflate_capped(const char* data, size_t n, uint64_t cap, const std::string& name) {
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) throw Error("zlib: inflateInit2 failed");
  std::string out;
  char buf[16384];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
  z.avail_in = static_cast<uInt>(n);
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      refuse("member '" + name + "' does not inflate (corrupt deflate data)");
    }
    out.append(buf, sizeof buf - z.avail_out);
    if (out.size() > cap) {
      inflateEnd(&z);
      refuse("member '" + name + "' inflates past its declared size");
    }
    if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      refuse("member '" + name + "' is truncated");
    }
  }
  inflateEnd(&z);
  return out;
}

// Bytes per element of a TorchScript storage type ("FloatStorage" ...); 0 if unknown.
uint64_t element_bytes(const std::string& type) {
  static const std::pair<const char*, uint64_t> kTypes[] = {
      {"DoubleStorage", 8}, {"FloatStorage", 4}, {"HalfStorage", 2}, {"BFloat16Storage", 2},
      {"LongStorage", 8}, {"IntStorage", 4}, {"ShortStorage", 2}, {"CharStorage", 1},
      {"ByteStorage", 1}, {"BoolStorage", 1}, {"ComplexFloatStorage", 8}, {"ComplexDoubleStorage", 16},
      {"QInt8Storage", 1}, {"QUInt8Storage", 1}, {"QInt32Storage", 4}, {"QUInt4x2Storage", 1},
      {"QUInt2x4Storage", 1}};
  for (const auto& [name, n] : kTypes)
    if (type == std::string("torch ") + name) return n;
  return 0;
}

// The storages a TorchScript pickle (data.pkl, constants.pkl) refers to: key -> bytes its
// tensor storage needs (numel x element size). A small pickle machine that knows only the
// opcodes torch.jit.save writes (protocol 2) and refuses any other: it never imports or calls
// anything, it only follows the stack far enough to read each persistent id
// ('storage', torch.<Type>Storage, key, location, numel).
std::map<std::string, uint64_t> storage_needs(const std::string& pkl, const std::string& name) {
  struct Value {
    enum Kind { kOther, kInt, kStr, kTuple, kMark } kind = kOther;
    int64_t i = 0;
    std::string s;
    std::vector<Value> items;
  };
  std::vector<Value> stack;
  std::map<uint64_t, Value> memo;
  std::map<std::string, uint64_t> needs;
  size_t p = 0;
  auto bad = [&](const std::string& why) { refuse("'" + name + "' is not a TorchScript pickle: " + why); };
  auto need = [&](size_t n) {
    if (p + n > pkl.size()) bad("truncated");
  };
  auto pop = [&]() {
    if (stack.empty()) bad("stack underflow");
    Value v = std::move(stack.back());
    stack.pop_back();
    return v;
  };
  auto pop_mark = [&]() {
    std::vector<Value> items;
    for (;;) {
      Value v = pop();
      if (v.kind == Value::kMark) break;
      items.push_back(std::move(v));
    }
    std::reverse(items.begin(), items.end());
    return items;
  };
  auto tuple_of = [](std::vector<Value> items) {
    Value t;
    t.kind = Value::kTuple;
    t.items = std::move(items);
    return t;
  };
  auto str = [](std::string s) {
    Value v;
    v.kind = Value::kStr;
    v.s = std::move(s);
    return v;
  };
  auto integer = [](int64_t i) {
    Value v;
    v.kind = Value::kInt;
    v.i = i;
    return v;
  };
  for (;;) {
    need(1);
    const uint8_t op = static_cast<uint8_t>(pkl[p++]);
    switch (op) {
      case 0x80: need(1); ++p; break;                    // PROTO
      case 0x95: need(8); p += 8; break;                 // FRAME
      case '.': return needs;                            // STOP
      case '(': { Value m; m.kind = Value::kMark; stack.push_back(m); break; }
      case ')': stack.push_back(tuple_of({})); break;    // EMPTY_TUPLE
      case 't': stack.push_back(tuple_of(pop_mark())); break;
      case 0x85: case 0x86: case 0x87: {                 // TUPLE1..3
        std::vector<Value> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        stack.push_back(tuple_of(std::move(items)));
        break;
      }
      case ']': case '}': case 'N': case 0x88: case 0x89: stack.push_back(Value{}); break;
      case 'a': pop(); break;                            // APPEND
      case 's': pop(); pop(); break;                     // SETITEM
      case 'e': case 'u': pop_mark(); break;             // APPENDS, SETITEMS
      case '0': pop(); break;                            // POP
      case '1': pop_mark(); break;                       // POP_MARK
      case '2': { Value v = pop(); stack.push_back(v); stack.push_back(v); break; }  // DUP
      case 'X': case 0x8c: case 0x8d: case 'B': case 'C': {  // (SHORT_)BINUNICODE(8), (SHORT_)BINBYTES
        const int w = op == 'X' || op == 'B' ? 4 : op == 0x8d ? 8 : 1;
        need(static_cast<size_t>(w));
        const uint64_t n = le(pkl, p, w);
        p += static_cast<size_t>(w);
        if (n > pkl.size() - p) bad("a string runs past the end");
        stack.push_back(str(pkl.substr(p, static_cast<size_t>(n))));
        p += static_cast<size_t>(n);
        break;
      }
      case 'c': {                                        // GLOBAL "module\nname\n": named, never imported
        const size_t a1 = pkl.find('\n', p);
        const size_t a2 = a1 == std::string::npos ? a1 : pkl.find('\n', a1 + 1);
        if (a2 == std::string::npos) bad("a GLOBAL without its names");
        stack.push_back(str(pkl.substr(p, a1 - p) + " " + pkl.substr(a1 + 1, a2 - a1 - 1)));
        p = a2 + 1;
        break;
      }
      case 0x93: { Value n = pop(); Value m = pop(); stack.push_back(str(m.s + " " + n.s)); break; }  // STACK_GLOBAL
      case 'J': need(4); stack.push_back(integer(static_cast<int32_t>(le(pkl, p, 4)))); p += 4; break;
      case 'K': need(1); stack.push_back(integer(static_cast<int64_t>(le(pkl, p, 1)))); p += 1; break;
      case 'M': need(2); stack.push_back(integer(static_cast<int64_t>(le(pkl, p, 2)))); p += 2; break;
      case 0x8a: {                                       // LONG1
        need(1);
        const size_t n = static_cast<size_t>(le(pkl, p, 1));
        ++p;
        need(n);
        if (n > 8) bad("an integer wider than 64 bits");
        uint64_t v = n ? le(pkl, p, static_cast<int>(n)) : 0;
        if (n && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        p += n;
        stack.push_back(integer(static_cast<int64_t>(v)));
        break;
      }
      case 'G': need(8); p += 8; stack.push_back(Value{}); break;  // BINFLOAT
      case 0x94: if (stack.empty()) bad("MEMOIZE on an empty stack"); memo[memo.size()] = stack.back(); break;
      case 'q': need(1); if (stack.empty()) bad("BINPUT on an empty stack"); memo[le(pkl, p, 1)] = stack.back(); p += 1; break;
      case 'r': need(4); if (stack.empty()) bad("BINPUT on an empty stack"); memo[le(pkl, p, 4)] = stack.back(); p += 4; break;
      case 'h': case 'j': {                              // BINGET, LONG_BINGET
        const int w = op == 'h' ? 1 : 4;
        need(static_cast<size_t>(w));
        auto it = memo.find(le(pkl, p, w));
        p += static_cast<size_t>(w);
        if (it == memo.end()) bad("a BINGET of nothing");
        stack.push_back(it->second);
        break;
      }
      case 'R': case 'b': case 0x81: pop(); pop(); stack.push_back(Value{}); break;  // REDUCE, BUILD, NEWOBJ
      case 'Q': {                                        // BINPERSID: ('storage', type, key, location, numel)
        Value id = pop();
        if (id.kind != Value::kTuple || id.items.size() < 5 || id.items[0].s != "storage" ||
            id.items[2].kind != Value::kStr || id.items[4].kind != Value::kInt || id.items[4].i < 0)
          bad("a persistent id that is not a tensor storage");
        const uint64_t el = element_bytes(id.items[1].s);
        if (el == 0) bad("unknown storage type '" + id.items[1].s + "'");
        const uint64_t numel = static_cast<uint64_t>(id.items[4].i);
        if (numel > (uint64_t{1} << 56) / el) bad("a storage of impossible size");
        auto& n = needs[id.items[2].s];
        n = std::max(n, numel * el);
        stack.push_back(Value{});
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        bad(std::string("pickle opcode ") + hex + " is not one torch.jit.save writes");
      }
    }
  }
}

}  // namespace

uint64_t check_torchscript_archive(const std::string& a, const ArchiveLimits& limits) {
  // End of central directory: the last 22+ bytes (a comment of up to 64 KiB may follow).
  constexpr uint32_t kEocd = 0x06054b50, kZip64Locator = 0x07064b50, kZip64Eocd = 0x06064b50;
  constexpr uint32_t kCentral = 0x02014b50, kLocal = 0x04034b50;
  if (a.size() < 22) refuse("not a TorchScript archive (too short for a zip file)");
  size_t eocd = std::string::npos;
  const size_t lowest = a.size() > 22 + 65535 ? a.size() - 22 - 65535 : 0;
  for (size_t p = a.size() - 22 + 1; p-- > lowest;) {
    if (le(a, p, 4) == kEocd) {
      eocd = p;
      break;
    }
  }
  if (eocd == std::string::npos) refuse("not a TorchScript archive (no zip directory)");
  uint64_t entries = le(a, eocd + 10, 2), cd_size = le(a, eocd + 12, 4), cd_off = le(a, eocd + 16, 4);
  if (eocd >= 20 && le(a, eocd - 20, 4) == kZip64Locator) {
    const uint64_t z64 = le(a, eocd - 20 + 8, 8);
    if (z64 + 56 > a.size() || le(a, z64, 4) != kZip64Eocd) refuse("the archive's zip64 directory is corrupt");
    entries = le(a, z64 + 32, 8);
    cd_size = le(a, z64 + 40, 8);
    cd_off = le(a, z64 + 48, 8);
  }
  if (entries > limits.max_members)
    refuse("the archive has " + std::to_string(entries) + " members, more than the " +
           std::to_string(limits.max_members) + " allowed");
  if (cd_off > a.size() || cd_size > a.size() - cd_off) refuse("the archive's zip directory points outside the file");

  uint64_t total = 0;
  // Tensor storages ("<dir>/data/<key>", "<dir>/constants/<key>") and the pickles that say how
  // large each must be; compared once the directory is read.
  std::map<std::string, uint64_t> storage_sizes;             // member name -> unpacked size
  std::map<std::string, std::pair<std::string, std::string>> pickles;  // "data"/"constants" -> (prefix, bytes)
  size_t p = static_cast<size_t>(cd_off);
  for (uint64_t i = 0; i < entries; ++i) {
    if (le(a, p, 4) != kCentral) refuse("the archive's zip directory is corrupt");
    const uint64_t method = le(a, p + 10, 2);
    uint64_t csize = le(a, p + 20, 4), usize = le(a, p + 24, 4);
    const size_t name_len = le(a, p + 28, 2), extra_len = le(a, p + 30, 2), comment_len = le(a, p + 32, 2);
    uint64_t local = le(a, p + 42, 4);
    if (p + 46 + name_len > a.size()) refuse("the archive's zip directory is truncated");
    const std::string name = a.substr(p + 46, name_len);
    // zip64 sizes and offset live in the extra field when the 32-bit ones are saturated.
    for (size_t e = p + 46 + name_len, end = e + extra_len; e + 4 <= end;) {
      const uint64_t id = le(a, e, 2), len = le(a, e + 2, 2);
      if (id == 0x0001) {
        size_t q = e + 4;
        if (usize == 0xFFFFFFFF) usize = le(a, q, 8), q += 8;
        if (csize == 0xFFFFFFFF) csize = le(a, q, 8), q += 8;
        if (local == 0xFFFFFFFF) local = le(a, q, 8);
      }
      e += 4 + len;
    }
    p += 46 + name_len + extra_len + comment_len;
    if (method != 0 && method != 8)
      refuse("member '" + name + "' uses zip compression method " + std::to_string(method) + " (only stored and deflate)");
    if (method == 0 && csize != usize) refuse("stored member '" + name + "' declares two different sizes");
    if (usize > limits.max_total_bytes || total + usize > limits.max_total_bytes)
      refuse("its members unpack to more than " + std::to_string(limits.max_total_bytes) +
             " bytes (backbone.max_bytes): a zip bomb or an oversized model");
    total += usize;
    // Where the member's data starts: after its local header (whose extra field may differ).
    if (local + 30 > a.size() || le(a, local, 4) != kLocal) refuse("member '" + name + "' has no local header");
    const uint64_t data = local + 30 + le(a, local + 26, 2) + le(a, local + 28, 2);
    if (data > a.size() || csize > a.size() - data) refuse("member '" + name + "' points outside the file");
    auto unpack = [&](uint64_t cap) {
      return method == 0 ? a.substr(data, csize) : inflate_capped(a.data() + data, static_cast<size_t>(csize), cap, name);
    };
    for (const char* dir : {"data", "constants"}) {
      const std::string tag = std::string("/") + dir + "/";
      const size_t at = name.find(tag);
      if (at != std::string::npos && at + tag.size() < name.size() && name.find('/', at + tag.size()) == std::string::npos)
        storage_sizes[name] = usize;
      const std::string pkl = std::string("/") + dir + ".pkl";
      if (name.size() > pkl.size() && name.compare(name.size() - pkl.size(), pkl.size(), pkl) == 0 &&
          name.find('/') == name.size() - pkl.size()) {
        if (usize > limits.max_code_bytes) refuse("'" + name + "' is larger than any backbone's pickle");
        pickles[dir] = {name.substr(0, name.size() - pkl.size()) + "/" + dir + "/", unpack(usize)};
      }
    }
    // Module code: TorchScript runs a module's __setstate__ while loading, before any check.
    const bool code = name.find("/code/") != std::string::npos && name.size() > 3 &&
                      name.compare(name.size() - 3, 3, ".py") == 0;
    if (!code) continue;
    if (usize > limits.max_code_bytes) refuse("code member '" + name + "' is larger than any backbone needs");
    const std::string src = unpack(usize);
    if (src.find("def __setstate__") != std::string::npos)
      refuse("'" + name + "' defines __setstate__, code that LibTorch would run while loading the file, before "
             "fedtl could check its operators");
  }
  // Every storage member is one a tensor refers to, and no larger than that tensor needs: a
  // member that declares more is how a zip bomb hides behind an honest-looking model.
  std::map<std::string, uint64_t> needs;
  for (const auto& [dir, pk] : pickles)
    for (const auto& [key, bytes] : storage_needs(pk.second, pk.first.substr(0, pk.first.size() - 1) + ".pkl"))
      needs[pk.first + key] = bytes;
  if (!storage_sizes.empty() && pickles.empty()) refuse("the archive holds tensor data but no data.pkl describing it");
  for (const auto& [member, size] : storage_sizes) {
    auto it = needs.find(member);
    if (it == needs.end()) refuse("member '" + member + "' is not the storage of any tensor the model declares");
    if (size > it->second)
      refuse("member '" + member + "' unpacks to " + std::to_string(size) + " bytes, but its tensor needs " +
             std::to_string(it->second) + ": a zip bomb");
  }
  return total;
}

}  // namespace fedtl::common
