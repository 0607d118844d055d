#include "src/common/json.h"

#include <gtest/gtest.h>

#include <string>

namespace uq::common {
namespace {

// The layout and member order of `qemu-img check --output=json` on a clean
// image, as qemu-img 7.2 prints it (members were inserted in QAPI order).
TEST(JsonTest, QemuLayoutFollowsQdictOrder) {
  Json j = Json::Object();
  j.Set("filename", Json::String("a.qcow2"));
  j.Set("format", Json::String("qcow2"));
  j.Set("check-errors", Json::Int(0));
  j.Set("image-end-offset", Json::Int(262144));
  j.Set("total-clusters", Json::Int(1024));
  EXPECT_EQ(j.Serialize(),
            "{\n"
            "    \"image-end-offset\": 262144,\n"
            "    \"total-clusters\": 1024,\n"
            "    \"check-errors\": 0,\n"
            "    \"filename\": \"a.qcow2\",\n"
            "    \"format\": \"qcow2\"\n"
            "}");
}

// "aa" and "aq" share QDict bucket 110: QEMU lists the later insertion first.
TEST(JsonTest, CollidingKeysLaterInsertedFirst) {
  ASSERT_EQ(QemuDictBucket("aa"), QemuDictBucket("aq"));
  Json j = Json::Object();
  j.Set("aa", Json::Int(1));
  j.Set("aq", Json::Int(2));
  EXPECT_EQ(j.Serialize(), "{\n    \"aq\": 2,\n    \"aa\": 1\n}");
  EXPECT_EQ(j.Serialize(JsonLayout::kLine), "{\"aa\": 1, \"aq\": 2}");
}

TEST(JsonTest, NestedAndEmptyContainers) {
  Json j = Json::Object();
  Json& list = j.Set("snapshots", Json::Array());
  list.Push(Json::Object());
  list.Push(Json::Bool(true));
  j.Set("empty", Json::Array());
  EXPECT_EQ(j.Serialize(),
            "{\n"
            "    \"snapshots\": [\n"
            "        {\n"
            "        },\n"
            "        true\n"
            "    ],\n"
            "    \"empty\": [\n"
            "    ]\n"
            "}");
  EXPECT_EQ(j.Serialize(JsonLayout::kLine), "{\"snapshots\": [{}, true], \"empty\": []}");
}

TEST(JsonTest, QemuStringEscapes) {
  EXPECT_EQ(JsonQuote("a\"b\\c\b\f\n\r\t\x01", JsonLayout::kQemu),
            "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\"");
  EXPECT_EQ(JsonQuote("\x7f", JsonLayout::kQemu), "\"\\u007F\"");
  EXPECT_EQ(JsonQuote("d\xc3\xa9j\xc3\xa0", JsonLayout::kQemu), "\"d\\u00E9j\\u00E0\"");
  // U+1F600 needs a surrogate pair.
  EXPECT_EQ(JsonQuote("\xf0\x9f\x98\x80", JsonLayout::kQemu), "\"\\uD83D\\uDE00\"");
  // Malformed: a lone continuation byte, a truncated sequence (the next
  // byte is then decoded on its own), an overlong form, a surrogate.
  EXPECT_EQ(JsonQuote("\x80x", JsonLayout::kQemu), "\"\\uFFFDx\"");
  EXPECT_EQ(JsonQuote("\xc3x", JsonLayout::kQemu), "\"\\uFFFDx\"");
  EXPECT_EQ(JsonQuote("\xe0\x80\xaf", JsonLayout::kQemu), "\"\\uFFFD\"");
  EXPECT_EQ(JsonQuote("\xed\xa0\x80", JsonLayout::kQemu), "\"\\uFFFD\"");
  // Modified UTF-8's two-byte NUL.
  EXPECT_EQ(JsonQuote("\xc0\x80", JsonLayout::kQemu), "\"\\u0000\"");
}

TEST(JsonTest, LineLayoutKeepsBytes) {
  EXPECT_EQ(JsonQuote("\xc3\xa9\x01\r", JsonLayout::kLine), "\"\xc3\xa9\\u0001\\u000d\"");
  // Every byte value survives a round trip.
  std::string all;
  for (int b = 1; b < 256; ++b) all += static_cast<char>(b);
  Json j = Json::Object();
  j.Set("s", Json::String(all));
  absl::StatusOr<Json> back = Json::Parse(j.Serialize(JsonLayout::kLine));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->Find("s")->AsString(), all);
}

TEST(JsonTest, ParseDocuments) {
  absl::StatusOr<Json> j = Json::Parse(
      " {\"a\": [1, -2, true, false, null], \"b\": {\"c\": \"\\u00e9\\ud83d\\ude00\\/\"}}");
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_EQ(j->Find("a")->items().size(), 5u);
  EXPECT_EQ(j->Find("a")->items()[1].AsInt(), -2);
  EXPECT_EQ(j->Find("a")->items()[4].kind(), Json::Kind::kNull);
  EXPECT_EQ(j->Find("b")->Find("c")->AsString(), "\xc3\xa9\xf0\x9f\x98\x80/");
  EXPECT_EQ(j->Find("missing"), nullptr);
}

TEST(JsonTest, ParseRejectsGarbage) {
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "1.5", "1e3", "\"abc", "tru", "{} x",
                          "99999999999999999999", "\"\\q\"", "\"\\u12\""}) {
    EXPECT_FALSE(Json::Parse(bad).ok()) << bad;
  }
  std::string deep(100, '[');
  EXPECT_FALSE(Json::Parse(deep).ok());
}

}  // namespace
}  // namespace uq::common
