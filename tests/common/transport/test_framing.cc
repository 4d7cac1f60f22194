#include "common/transport/framing.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "common/errors.h"

namespace fedtl::common {
namespace {

std::string binary_payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xFF);
  return s;
}

// Header bytes for the given fields, packed by hand (independent of encode_frame).
std::string raw_header(uint16_t version, uint16_t type, uint32_t length, uint32_t reserved = 0) {
  std::string h = "FDTL";
  h.push_back(static_cast<char>(version & 0xFF));
  h.push_back(static_cast<char>(version >> 8));
  h.push_back(static_cast<char>(type & 0xFF));
  h.push_back(static_cast<char>(type >> 8));
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>((length >> (8 * i)) & 0xFF));
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>((reserved >> (8 * i)) & 0xFF));
  return h;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected ProtocolError";
  return {};
}

TEST(Framing, HeaderLayoutIsLittleEndian) {
  Frame f{MessageType::kUpdate, std::string(0x0102, 'x')};
  const std::string bytes = encode_frame(f);
  ASSERT_EQ(bytes.size(), kFrameHeaderSize + 0x0102);
  EXPECT_EQ(bytes.substr(0, 16), raw_header(kProtocolVersion, 6, 0x0102));
  EXPECT_EQ(static_cast<uint8_t>(bytes[8]), 0x02);
  EXPECT_EQ(static_cast<uint8_t>(bytes[9]), 0x01);
}

TEST(Framing, EncodeAppendsToExistingBuffer) {
  std::string out = "prefix";
  encode_frame(Frame{MessageType::kHeartbeat, "abc"}, out);
  EXPECT_EQ(out.size(), 6 + kFrameHeaderSize + 3);
  EXPECT_EQ(out.substr(0, 6), "prefix");
  EXPECT_EQ(out.substr(6 + kFrameHeaderSize), "abc");
}

TEST(Framing, RoundTripEveryType) {
  for (uint16_t t = 1; t <= 9; ++t) {
    ASSERT_TRUE(is_known_message_type(t));
    Frame f{static_cast<MessageType>(t), binary_payload(t * 37)};
    Frame back = decode_frame(encode_frame(f));
    EXPECT_EQ(back.type, f.type);
    EXPECT_EQ(back.payload, f.payload);
  }
  Frame empty = decode_frame(encode_frame(Frame{MessageType::kReady, ""}));
  EXPECT_EQ(empty.type, MessageType::kReady);
  EXPECT_TRUE(empty.payload.empty());
}

TEST(Framing, KnownTypesAndNames) {
  EXPECT_FALSE(is_known_message_type(0));
  EXPECT_TRUE(is_known_message_type(10));   // SiteEvaluation
  EXPECT_FALSE(is_known_message_type(11));
  EXPECT_STREQ(message_type_name(MessageType::kSiteEvaluation), "SiteEvaluation");
  EXPECT_TRUE(is_known_message_type(16));   // secure aggregation: 16..25
  EXPECT_TRUE(is_known_message_type(25));
  EXPECT_FALSE(is_known_message_type(26));
  EXPECT_STREQ(message_type_name(MessageType::kSecAggMasked), "SecAggMasked");
  EXPECT_STREQ(message_type_name(MessageType::kJobSpec), "JobSpec");
  EXPECT_STREQ(message_type_name(MessageType::kError), "Error");
  EXPECT_STREQ(message_type_name(static_cast<MessageType>(99)), "Unknown");
}

TEST(Framing, DecoderHandlesSplitAtEveryOffset) {
  const Frame f1{MessageType::kRoundStart, binary_payload(40)};
  const Frame f2{MessageType::kShutdown, ""};
  const Frame f3{MessageType::kUpdate, binary_payload(23)};
  std::string stream;
  encode_frame(f1, stream);
  encode_frame(f2, stream);
  encode_frame(f3, stream);

  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameDecoder dec;
    std::vector<Frame> got;
    dec.feed(stream.data(), cut);
    while (auto f = dec.next()) got.push_back(*f);
    dec.feed(stream.data() + cut, stream.size() - cut);
    while (auto f = dec.next()) got.push_back(*f);
    ASSERT_EQ(got.size(), 3u) << "cut at " << cut;
    EXPECT_EQ(got[0].type, f1.type);
    EXPECT_EQ(got[0].payload, f1.payload);
    EXPECT_EQ(got[1].type, f2.type);
    EXPECT_TRUE(got[1].payload.empty());
    EXPECT_EQ(got[2].type, f3.type);
    EXPECT_EQ(got[2].payload, f3.payload);
    EXPECT_EQ(dec.pending_bytes(), 0u);
  }
}

TEST(Framing, DecoderByteAtATime) {
  std::string stream;
  for (int i = 0; i < 5; ++i) encode_frame(Frame{MessageType::kHeartbeat, binary_payload(i * 3)}, stream);
  FrameDecoder dec;
  int frames = 0;
  for (size_t i = 0; i < stream.size(); ++i) {
    dec.feed(&stream[i], 1);
    while (auto f = dec.next()) {
      EXPECT_EQ(f->payload, binary_payload(frames * 3));
      ++frames;
    }
  }
  EXPECT_EQ(frames, 5);
  EXPECT_EQ(dec.pending_bytes(), 0u);
}

TEST(Framing, DecoderReportsPendingBytesOfTruncatedFrame) {
  const std::string bytes = encode_frame(Frame{MessageType::kUpdate, binary_payload(10)});
  FrameDecoder dec;
  dec.feed(bytes.data(), bytes.size() - 1);
  EXPECT_FALSE(dec.next().has_value());
  EXPECT_EQ(dec.pending_bytes(), bytes.size() - 1);
  dec.feed(bytes.data() + bytes.size() - 1, 1);
  ASSERT_TRUE(dec.next().has_value());
  EXPECT_EQ(dec.pending_bytes(), 0u);
}

TEST(Framing, DecoderRejectsBadMagic) {
  std::string bytes = encode_frame(Frame{MessageType::kHello, "x"});
  bytes[0] = 'G';
  FrameDecoder dec;
  dec.feed(bytes.data(), 15);  // header incomplete: nothing to judge yet
  const std::string msg = error_of([&] { dec.feed(bytes.data() + 15, 1); });
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  EXPECT_THROW(decode_frame(bytes), ProtocolError);
}

TEST(Framing, WrongVersionNamesBothVersions) {
  const std::string bytes = raw_header(7, 1, 0);
  const std::string msg = error_of([&] { decode_frame(bytes); });
  EXPECT_EQ(msg, "peer speaks fedtl protocol version 7, this build speaks " + std::to_string(kProtocolVersion));
  FrameDecoder dec;
  EXPECT_THROW(dec.feed(bytes.data(), bytes.size()), ProtocolError);
}

TEST(Framing, RejectsUnknownType) {
  const std::string msg = error_of([] { decode_frame(raw_header(kProtocolVersion, 42, 0)); });
  EXPECT_NE(msg.find("42"), std::string::npos) << msg;
  EXPECT_THROW(decode_frame(raw_header(kProtocolVersion, 0, 0)), ProtocolError);
}

TEST(Framing, RejectsNonZeroReserved) {
  EXPECT_THROW(decode_frame(raw_header(kProtocolVersion, 1, 0, 1)), ProtocolError);
  EXPECT_THROW(decode_frame(raw_header(kProtocolVersion, 1, 0, 0x80000000u)), ProtocolError);
}

TEST(Framing, OversizedLengthRejectedBeforePayloadArrives) {
  const uint32_t max = 1024;
  // Header claims 1 MiB; only the header is fed. The decoder must refuse right away
  // rather than wait (and buffer) for the payload.
  const std::string header = raw_header(kProtocolVersion, 6, 1u << 20);
  FrameDecoder dec(max);
  dec.feed(header.data(), 10);
  const std::string msg = error_of([&] { dec.feed(header.data() + 10, 6); });
  EXPECT_NE(msg.find("1048576"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1024"), std::string::npos) << msg;

  // Exactly at the limit is accepted.
  FrameDecoder ok(max);
  const std::string at_limit = encode_frame(Frame{MessageType::kUpdate, std::string(max, 'z')});
  ok.feed(at_limit.data(), at_limit.size());
  auto f = ok.next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->payload.size(), max);
  EXPECT_THROW(decode_frame(at_limit, max - 1), ProtocolError);
}

TEST(Framing, BadSecondHeaderDetectedAfterFirstFrame) {
  std::string stream = encode_frame(Frame{MessageType::kReady, "ok"});
  stream += raw_header(3, 1, 0);
  FrameDecoder dec;
  // The first header is fine; the second arrives in the same feed and is checked when the
  // first frame is taken.
  dec.feed(stream.data(), stream.size());
  EXPECT_THROW(dec.next(), ProtocolError);
}

TEST(Framing, DecodeFrameRejectsTruncation) {
  const std::string bytes = encode_frame(Frame{MessageType::kUpdate, binary_payload(100)});
  EXPECT_THROW(decode_frame(bytes.substr(0, 10)), ProtocolError);  // partial header
  const std::string msg = error_of([&] { decode_frame(bytes.substr(0, bytes.size() - 1)); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_THROW(decode_frame(""), ProtocolError);
}

TEST(Framing, DecodeFrameRejectsTrailingBytes) {
  const std::string bytes = encode_frame(Frame{MessageType::kUpdate, "abc"}) + "zz";
  const std::string msg = error_of([&] { decode_frame(bytes); });
  EXPECT_NE(msg.find("2 trailing"), std::string::npos) << msg;
}

TEST(Framing, DecoderStaysCorrectOverManyFrames) {
  // Many frames through one decoder: pending bytes stay bounded and output stays correct.
  FrameDecoder dec;
  const std::string one = encode_frame(Frame{MessageType::kHeartbeat, binary_payload(1000)});
  for (int i = 0; i < 2000; ++i) {
    dec.feed(one.data(), 700);
    EXPECT_FALSE(dec.next().has_value());
    dec.feed(one.data() + 700, one.size() - 700);
    auto f = dec.next();
    ASSERT_TRUE(f.has_value());
    ASSERT_EQ(f->payload.size(), 1000u);
    EXPECT_EQ(dec.pending_bytes(), 0u);
  }
}

}  // namespace
}  // namespace fedtl::common
