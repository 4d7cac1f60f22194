#include "common/data/manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/errors.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;

// One CSV record's fields; false at end of input. A quoted field may span lines; `line`
// advances by the lines consumed.
bool read_record(std::istream& in, std::vector<std::string>& fields, int64_t& line, const std::string& file) {
  fields.clear();
  std::string field;
  bool quoted = false, any = false, was_quoted = false;
  const int64_t start = line + 1;
  char c;
  while (in.get(c)) {
    any = true;
    if (quoted) {
      if (c == '"') {
        if (in.peek() == '"') {
          in.get(c);
          field += '"';
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && field.empty() && !was_quoted) {
      quoted = was_quoted = true;
    } else if (c == ',') {
      fields.push_back(field);
      field.clear();
      was_quoted = false;
    } else if (c == '\n') {
      ++line;
      if (!field.empty() && field.back() == '\r') field.pop_back();
      fields.push_back(field);
      return true;
    } else {
      field += c;
    }
  }
  if (quoted) throw DataError(file + ":" + std::to_string(start) + ": unterminated quoted field");
  if (!any) return false;
  ++line;
  if (!field.empty() && field.back() == '\r') field.pop_back();
  fields.push_back(field);
  return true;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

}  // namespace

const char* to_string(Split s) {
  switch (s) {
    case Split::kTrain: return "train";
    case Split::kValidation: return "validation";
    case Split::kTest: return "test";
    case Split::kNone: break;
  }
  return "";
}

bool row_wanted(const ManifestRow& r, Split which) {
  switch (which) {
    case Split::kNone: return true;
    case Split::kTest: return r.split == Split::kTest;
    case Split::kTrain:
    case Split::kValidation: return r.split != Split::kTest;
  }
  return true;
}

std::vector<std::string> Manifest::labels() const {
  std::set<std::string> s;
  for (const auto& r : rows) s.insert(r.label);
  return {s.begin(), s.end()};
}

Manifest read_manifest(const std::string& csv_path, const std::string& base_dir, bool check_files) {
  std::ifstream in(csv_path, std::ios::binary);
  if (!in) throw DataError(csv_path + ": label manifest not found or unreadable");
  Manifest m;
  m.file = csv_path;
  int64_t line = 0;
  std::vector<std::string> header;
  if (!read_record(in, header, line, csv_path)) throw DataError(csv_path + ": empty label manifest (no header row)");
  if (!header.empty() && header[0].rfind("\xEF\xBB\xBF", 0) == 0) header[0] = header[0].substr(3);  // UTF-8 BOM
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < header.size(); ++i) {
    const std::string name = trim(header[i]);
    if (!col.emplace(name, i).second) throw DataError(csv_path + ":1: column '" + name + "' appears twice");
  }
  auto column = [&](const char* name) -> long { return col.count(name) ? static_cast<long>(col[name]) : -1; };
  const long c_path = column("path"), c_uid = column("sop_instance_uid"), c_label = column("label"),
             c_patient = column("patient_id"), c_split = column("split");
  if (c_label < 0) throw DataError(csv_path + ":1: no 'label' column (header: " + std::string("path or sop_instance_uid, label[, patient_id][, split])"));
  if ((c_path < 0) == (c_uid < 0))
    throw DataError(csv_path + ":1: needs exactly one of the columns 'path' and 'sop_instance_uid'");
  m.keyed_by_uid = c_uid >= 0;
  m.has_split = c_split >= 0;

  std::set<std::string> keys;
  std::map<std::string, std::pair<Split, int64_t>> patient_side;  // patient -> (first split side, line)
  std::vector<std::string> f;
  while (true) {
    const int64_t first_line = line + 1;
    if (!read_record(in, f, line, csv_path)) break;
    const std::string where = csv_path + ":" + std::to_string(first_line) + ": ";
    if (f.size() == 1 && trim(f[0]).empty()) continue;  // blank line
    if (f.size() != header.size())
      throw DataError(where + std::to_string(f.size()) + " fields, the header has " + std::to_string(header.size()));
    ManifestRow r;
    r.line = first_line;
    r.label = trim(f[static_cast<size_t>(c_label)]);
    if (r.label.empty()) throw DataError(where + "empty label");
    std::string key;
    if (m.keyed_by_uid) {
      r.sop_instance_uid = trim(f[static_cast<size_t>(c_uid)]);
      if (r.sop_instance_uid.empty()) throw DataError(where + "empty sop_instance_uid");
      key = r.sop_instance_uid;
    } else {
      r.path = trim(f[static_cast<size_t>(c_path)]);
      if (r.path.empty()) throw DataError(where + "empty path");
      const fs::path p = fs::path(r.path);
      if (p.is_absolute()) throw DataError(where + "path '" + r.path + "' must be relative to data.dir");
      for (const auto& part : p)
        if (part == "..") throw DataError(where + "path '" + r.path + "' leaves data.dir ('..')");
      if (check_files) {
        std::error_code ec;
        if (!fs::is_regular_file(fs::path(base_dir) / p, ec))
          throw DataError(where + "file '" + r.path + "' not found under " + base_dir);
      }
      key = p.lexically_normal().string();
    }
    if (!keys.insert(key).second) throw DataError(where + "'" + key + "' is listed twice");
    if (c_patient >= 0) r.patient_id = trim(f[static_cast<size_t>(c_patient)]);
    if (c_split >= 0) {
      const std::string s = trim(f[static_cast<size_t>(c_split)]);
      if (s == "train") r.split = Split::kTrain;
      else if (s == "validation") r.split = Split::kValidation;
      else if (s == "test") r.split = Split::kTest;
      else if (s.empty()) r.split = Split::kNone;
      else throw DataError(where + "unknown split '" + s + "' (train, validation or test)");
    }
    if (!r.patient_id.empty() && r.split != Split::kNone) {
      auto [it, fresh] = patient_side.emplace(r.patient_id, std::make_pair(r.split, r.line));
      if (!fresh && it->second.first != r.split)
        throw DataError(where + "patient '" + r.patient_id + "' is in split '" + to_string(r.split) + "' here and in '" +
                        to_string(it->second.first) + "' on line " + std::to_string(it->second.second) +
                        ": a patient's images must all fall on one side");
    }
    m.rows.push_back(std::move(r));
  }
  if (m.rows.empty()) throw DataError(csv_path + ": the label manifest has no rows");
  return m;
}

}  // namespace fedtl::common
