// The safetensors reader on malformed files, each case read both from a
// file and from a pipe (once, in order), with the message it must give; the
// specification's rules one by one: the length field, JSON syntax, the
// schema, unique names, sizes and offsets. And a model's weights from a FIFO.
#define _GNU_SOURCE
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *tmpdir(void) { return td_mkdtemp(TEST_BINARY_DIR); }

// An 8-byte length, the header, then n data bytes.
static uint8_t *st_bytes(const char *header, const void *data, size_t n, size_t *len) {
  size_t h = strlen(header);
  uint8_t *b = calloc(1, 8 + h + n + 1);
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)((uint64_t)h >> (8 * i));
  memcpy(b + 8, header, h);
  if (n)
    memcpy(b + 8 + h, data, n);
  *len = 8 + h + n;
  return b;
}

// Reads every tensor of f in file order, then to the end: all a load does.
static bool read_all_tensors(StFile *f, char **err) {
  for (int i = 0; i < f->n; i++) {
    void *buf = malloc(f->e[i].end - f->e[i].begin + 1);
    bool ok = st_read_raw(f, &f->e[i], buf, err);
    free(buf);
    if (!ok)
      return false;
  }
  return st_finish(f, err);
}

// Reads f whole (NULL: opening it failed, err says why) and checks that
// nothing allocated since `before` stays so once the message is freed (the
// fuzzer found messages that leaked). main() turns glibc's per-thread cache
// off, which would hold freed blocks as allocated.
static char *verdict(size_t before, StFile *f, char *err) {
  static char msg[4096];
  bool ok = f && read_all_tensors(f, &err);
  st_free(f);
  if (!ok)
    snprintf(msg, sizeof msg, "%s", err);
  free(ok ? NULL : err);
  size_t after = mallinfo2().uordblks;
  ck_assert_msg(after <= before, "%zu bytes left allocated: %s", after - before, msg);
  return ok ? NULL : xc_strdup(msg);
}

static char *read_input(int fd, const char *name) {
  size_t before = mallinfo2().uordblks;
  char *err = NULL;
  StFile *f = st_open_fd(fd, name, &err);
  return verdict(before, f, err);
}

// The error of reading bytes as a file, or NULL.
static char *err_as_file(const uint8_t *b, size_t n) {
  char *path = xc_join(tmpdir(), "t.safetensors");
  td_write_bytes(path, b, (long)n);
  int fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  return read_input(fd, path);
}

// The same through a pipe (the bytes fit its buffer).
static char *err_as_pipe(const uint8_t *b, size_t n) {
  int fd[2];
  ck_assert_int_eq(pipe(fd), 0);
  ck_assert_int_eq(write(fd[1], b, n), (ssize_t)n);
  close(fd[1]);
  return read_input(fd[0], "pipe:");
}

// The same from memory (st_open_mem: a library's embedded weights).
static char *err_as_mem(const uint8_t *b, size_t n) {
  size_t before = mallinfo2().uordblks;
  char *err = NULL;
  StFile *f = st_open_mem(b, (int64_t)n, "mem:", &err);
  return verdict(before, f, err);
}

// The three ways refuse it, naming the input and saying want.
static void rejected(const char *header, const void *data, size_t n, const char *want) {
  size_t len;
  uint8_t *b = st_bytes(header, data, n, &len);
  char *e1 = err_as_file(b, len), *e2 = err_as_pipe(b, len), *e3 = err_as_mem(b, len);
  ck_assert_msg(e1, "file accepted: %s", header);
  ck_assert_msg(e2, "pipe accepted: %s", header);
  ck_assert_msg(e3, "memory accepted: %s", header);
  ck_assert_msg(strstr(e1, "t.safetensors: ") && strstr(e1, want), "'%s' not in: %s", want, e1);
  ck_assert_msg(strstr(e2, "pipe:: ") && strstr(e2, want), "'%s' not in: %s", want, e2);
  ck_assert_msg(strstr(e3, "mem:: ") && strstr(e3, want), "'%s' not in: %s", want, e3);
  free(b);
}

static void accepted(const char *header, const void *data, size_t n) {
  size_t len;
  uint8_t *b = st_bytes(header, data, n, &len);
  char *e1 = err_as_file(b, len), *e2 = err_as_pipe(b, len), *e3 = err_as_mem(b, len);
  ck_assert_msg(!e1, "%s: %s", header, e1);
  ck_assert_msg(!e2, "%s: %s", header, e2);
  ck_assert_msg(!e3, "%s: %s", header, e3);
  free(b);
}

static const uint8_t zeros[64];

START_TEST(st_length_field) {
  // Shorter than the length, a length beyond the file or over 100 MB (on a
  // pipe: refused before anything is allocated for it), a tiny one.
  uint8_t b[16] = {5, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
  ck_assert(strstr(err_as_file(b, 0), "shorter than the header's length"));
  ck_assert(strstr(err_as_pipe(b, 5), "shorter than the header's length"));
  ck_assert(strstr(err_as_file(b, 10), "a header of 5 bytes in a file of 10"));
  ck_assert(strstr(err_as_mem(b, 10), "mem:: not a safetensors file (a header of 5 bytes in a file of 10)"));
  ck_assert(strstr(err_as_mem(b, 0), "shorter than the header's length"));
  ck_assert(strstr(err_as_pipe(b, 10), "the file ends inside its header (2 of 5 bytes)"));
  uint8_t big[8] = {0x01, 0xe1, 0xf5, 0x05}; // 100000001
  ck_assert(strstr(err_as_pipe(big, 8), "a header of 100000001 bytes, over the limit of 100000000"));
  uint8_t huge[12] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
  ck_assert(strstr(err_as_pipe(huge, 10), "over the limit"));
  ck_assert(strstr(err_as_file(huge, 10), "over the limit"));
  uint8_t one[9] = {1, 0, 0, 0, 0, 0, 0, 0, '{'};
  ck_assert(strstr(err_as_file(one, 9), "a header of 1 bytes"));
  // A 100 MB claim on a pipe that sends 20 bytes: an error at once.
  uint8_t claim[28] = {0x00, 0xe1, 0xf5, 0x05, 0, 0, 0, 0, '{', '"'};
  ck_assert(strstr(err_as_pipe(claim, 28), "ends inside its header (20 of 100000000 bytes)"));
  // Padding is spaces, as the reference writes: NULs are not JSON.
  uint8_t nul[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, 0};
  ck_assert(strstr(err_as_file(nul, 12), "text after the header's object"));
}
END_TEST

START_TEST(st_json_syntax) {
  rejected("[]", NULL, 0, "the header must start with '{'");
  rejected(" {}", NULL, 0, "the header must start with '{'");
  rejected("{\"a\":", NULL, 0, "malformed header");
  rejected("{}x", NULL, 0, "text after the header's object");
  rejected("{}{}", NULL, 0, "text after the header's object");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},}", zeros, 4,
           "expected a string");
  rejected("{\"a\" {}}", NULL, 0, "expected ':'");
  rejected("{\"a\":{\"dtype\":\"F32\" \"shape\":[]}}", NULL, 0, "expected ',' or '}'");
  // Strings: control characters, bad escapes, lone surrogates, NUL, UTF-8.
  rejected("{\"a\tb\":{}}", NULL, 0, "control character 0x09 in a string");
  rejected("{\"a\\qb\":{}}", NULL, 0, "bad escape '\\q'");
  rejected("{\"a\\ud800\":{}}", NULL, 0, "lone surrogate");
  rejected("{\"a\\udc00\":{}}", NULL, 0, "lone surrogate");
  rejected("{\"a\\u12\":{}}", NULL, 0, "bad \\u escape");
  rejected("{\"a\\u0000b\":{}}", NULL, 0, "\\u0000 in a string");
  rejected("{\"a\xff\":{}}", NULL, 0, "not valid UTF-8");
  rejected("{\"a\xc0\xaf\":{}}", NULL, 0, "not valid UTF-8");     // overlong '/'
  rejected("{\"a\xed\xa0\x80\":{}}", NULL, 0, "not valid UTF-8"); // a surrogate
  rejected("{\"a", NULL, 0, "unterminated string");
  rejected("{\"a\\", NULL, 0, "unterminated string");
  // Values of unknown keys are skipped, but must be JSON, nested at most 64.
  accepted("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],"
           "\"x\":[1,-2.5e+3,true,null,{\"y\":\"\\u00e9\\ud83d\\ude00\"}]}}",
           zeros, 4);
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":tru}}", zeros, 4,
           "expected a value");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":01}}", zeros, 4,
           "expected ',' or '}'");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":1.}}", zeros, 4,
           "bad number");
  char deep[400] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":";
  for (int i = 0; i < 70; i++)
    strcat(deep, "[");
  rejected(deep, zeros, 4, "nested more than 64 deep");
  // Padding: spaces (what the reference writes) are fine; whitespace
  // inside too.
  accepted("{ \"a\" : { \"dtype\" : \"F32\" , \"shape\" : [ ] ,\n\"data_offsets\" : [ 0 , 4 ] } }  ",
           zeros, 4);
}
END_TEST

START_TEST(st_schema) {
  rejected("{\"a\":[]}", NULL, 0, "tensor 'a': an entry must be an object");
  rejected("{\"a\":{\"shape\":[],\"data_offsets\":[0,0]}}", NULL, 0, "tensor 'a' lacks a dtype");
  rejected("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,0]}}", NULL, 0, "lacks a shape");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[]}}", NULL, 0, "lacks data_offsets");
  rejected("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
           zeros, 4, "tensor 'a' has two \"dtype\" keys");
  rejected("{\"a\":{\"dtype\":\"F33\",\"shape\":[],\"data_offsets\":[0,4]}}", zeros, 4,
           "unknown dtype 'F33'");
  rejected("{\"a\":{\"dtype\":\"F32xxxxxxxxx\",\"shape\":[],\"data_offsets\":[0,4]}}", zeros, 4,
           "unknown dtype");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", zeros, 4,
           "a dimension is negative");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", zeros, 4,
           "a dimension must be an integer");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", zeros, 4,
           "a dimension must be an integer");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", zeros, 4,
           "a dimension has a leading zero");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,4]}}",
           zeros, 4, "a dimension is too large");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
           zeros, 4, "tensor 'a' has more than 8 dimensions");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[-4,0]}}", zeros, 4,
           "an offset is negative");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0]}}", zeros, 4,
           "data_offsets must be [begin, end]");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4,8]}}", zeros, 4,
           "data_offsets must be [begin, end]");
  rejected("{\"__metadata__\":{\"k\":1}}", NULL, 0, "__metadata__ \"k\" must be a string");
  rejected("{\"__metadata__\":[]}", NULL, 0, "__metadata__ must be an object of strings");
  rejected("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", NULL, 0,
           "__metadata__ has two \"k\" keys");
  rejected("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0, "two \"__metadata__\" keys");
  accepted("{\"__metadata__\":null}", NULL, 0);
  accepted("{}", NULL, 0);
}
END_TEST

START_TEST(st_names_and_sizes) {
  // The same name twice (today's reader took the first).
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}",
           zeros, 8, "the name 'a' appears twice");
  // Sizes: dtype times shape, each product checked before it is made.
  rejected("{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,12]}}", zeros, 12,
           "tensor 'a': data_offsets [0, 12] hold 12 bytes, but shape [3] of F16 needs 6");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}",
           NULL, 0, "shape [4294967296,4294967296] has more elements than 64 bits count");
  rejected("{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]}}",
           NULL, 0, "2305843009213693952 elements of F64 are more bytes than 64 bits count");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4,4611686018427387904,0],"
           "\"data_offsets\":[0,0]}}",
           NULL, 0, "more elements than 64 bits count");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", zeros, 8,
           "data_offsets [8, 0] end before they begin");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[9223372036854775800,"
           "9223372036854775804]}}",
           zeros, 4, "leave a gap after offset 0");
  // Offsets must tile the data: from 0, no gaps, no overlaps, nothing after.
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}", zeros, 8,
           "tensor 'a': data_offsets [4, 8] leave a gap after offset 0");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}",
           zeros, 8, "tensor 'b': data_offsets [4, 8] overlap the tensor before, which ends at 8");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
           zeros, 8, "overlap the tensor before");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", zeros, 5,
           "bytes after the last tensor (the header's offsets end at 4)");
  rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", zeros, 12, "16");
  rejected("{}", zeros, 1, "bytes after the last tensor");
  // In any order in the header; empty tensors anywhere.
  accepted("{\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[4,12]},"
           "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
           "\"a\":{\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"f\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[12,12]}}",
           zeros, 12);
}
END_TEST

// Names with escapes come back decoded; st_find finds them among many.
START_TEST(st_lookup_and_conversion) {
  char *path = xc_join(tmpdir(), "c.safetensors");
  uint8_t data[2 + 2 + 8];
  uint16_t h = 0x3c00, bf = 0xc040; // 1.0 in F16, -3.0 in BF16
  double d = 0.5;
  memcpy(data, &h, 2), memcpy(data + 2, &bf, 2), memcpy(data + 4, &d, 8);
  size_t len;
  uint8_t *b = st_bytes("{\"h\\u00e9\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                        "\"\\ud83d\\ude00\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[2,4]},"
                        "\"d\":{\"dtype\":\"F64\",\"shape\":[1,1],\"data_offsets\":[4,12]}}",
                        data, sizeof data, &len);
  td_write_bytes(path, b, (long)len);
  char *err;
  StFile *f = st_open(path, &err);
  ck_assert_msg(f, "%s", err);
  float v[3];
  ck_assert(st_read_f32(f, st_find(f, "h\xc3\xa9"), &v[0], &err));
  ck_assert(st_read_f32(f, st_find(f, "\xf0\x9f\x98\x80"), &v[1], &err));
  ck_assert(st_read_f32(f, st_find(f, "d"), &v[2], &err));
  ck_assert(v[0] == 1.0f && v[1] == -3.0f && v[2] == 0.5f);
  ck_assert_ptr_null(st_find(f, "x"));
  st_free(f);
  // A pipe moves forward only: reading back is an error, not a wrong value.
  int fd[2];
  ck_assert_int_eq(pipe(fd), 0);
  ck_assert_int_eq(write(fd[1], b, len), (ssize_t)len);
  close(fd[1]);
  f = st_open_fd(fd[0], "pipe:", &err);
  ck_assert(st_read_f32(f, st_find(f, "d"), &v[2], &err));
  ck_assert(!st_read_f32(f, st_find(f, "h\xc3\xa9"), &v[0], &err));
  ck_assert_msg(strstr(err, "tensors of a pipe must be read in file order"), "%s", err);
  st_free(f);
  // A directory.
  ck_assert(!st_open(tmpdir(), &err));
  ck_assert_msg(strstr(err, "is a directory"), "%s", err);
  free(b);
}
END_TEST

// A model's weights load from a FIFO as from a file.
static void *write_fifo(void *arg) {
  char **a = arg;
  long n;
  char *bytes = read_all(a[0], &n);
  int fd = open(a[1], O_WRONLY);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, bytes, n), n);
  close(fd);
  return NULL;
}

START_TEST(st_fifo_weights) {
  char *dir = tmpdir(), *path = xc_join(dir, "w.safetensors"), *fifo = xc_join(dir, "fifo");
  float *p = xc_alloc_floats(xc_model.param_floats), *s = xc_alloc_floats(xc_model.state_floats);
  xc_init_tensors(p, xc_model.params, xc_model.nparams, 3, 1);
  xc_save_weights(path, &xc_model, p, s, NULL);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  pid_t pid = fork();
  if (pid == 0) {
    char *a[] = {path, fifo};
    write_fifo(a);
    _exit(0);
  }
  float *q = xc_alloc_floats(xc_model.param_floats);
  xc_load_weights(fifo, &xc_model, q, s, NULL);
  waitpid(pid, NULL, 0);
  ck_assert_int_eq(memcmp(p, q, xc_model.param_floats * 4), 0);
}
END_TEST

Suite *safetensors_suite(void) {
  Suite *s = suite_create("safetensors");
  TCase *tc = tcase_create("reader");
  tcase_add_test(tc, st_length_field);
  tcase_add_test(tc, st_json_syntax);
  tcase_add_test(tc, st_schema);
  tcase_add_test(tc, st_names_and_sizes);
  tcase_add_test(tc, st_lookup_and_conversion);
  tcase_add_test(tc, st_fifo_weights);
  suite_add_tcase(s, tc);
  return s;
}

int main(int argc, char **argv) {
  const char *tunable = "glibc.malloc.tcache_count=0";
  if (argc > 0 && !getenv("XC_TEST_TCACHE_OFF")) {
    setenv("XC_TEST_TCACHE_OFF", "1", 1);
    setenv("GLIBC_TUNABLES", tunable, 1);
    execv("/proc/self/exe", argv);
  }
  return run_suite(safetensors_suite());
}
