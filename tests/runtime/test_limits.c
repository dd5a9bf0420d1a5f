// Tests of what an image file may cost the loader (image.c, the folder
// listing of data.c): hostile files of a few hundred bytes that claim huge
// images, end early or inflate a thousandfold, and entries of a data folder
// that are no files (a FIFO, a device, a socket, a directory named x.jpg),
// are each skipped with their path and reason, fast and in little memory;
// a large but legitimate image warns and loads, as with PIL. Every load runs
// in a child with its address space and CPU time limited and an alarm set, so a loader
// that allocates what a file claims dies, and one that blocks is killed.
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <zlib.h>

static const char *const rgb_names[] = {"red", "green", "blue"};

static char *tmpdir(void) { return td_mkdtemp(TEST_BINARY_DIR); }

static void put32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

//
// Hostile PNG files
//

static void png_chunk(FILE *f, const char *type, const uint8_t *data, uint32_t n) {
  uint8_t head[8];
  put32(head, n);
  memcpy(head + 4, type, 4);
  uLong crc = crc32(crc32(0, head + 4, 4), data, n);
  uint8_t tail[4];
  put32(tail, (uint32_t)crc);
  ck_assert(fwrite(head, 8, 1, f) == 1 && (n == 0 || fwrite(data, n, 1, f) == 1) &&
            fwrite(tail, 4, 1, f) == 1);
}

// A PNG of w x h (8-bit RGB, or depth and colour type as given) whose IDAT
// holds idat; with end, an IEND follows.
static void write_png_file(const char *path, uint32_t w, uint32_t h, int depth, int type,
                           const uint8_t *idat, size_t n, bool end) {
  FILE *f = fopen(path, "wb");
  ck_assert(f);
  fwrite("\x89PNG\r\n\x1a\n", 8, 1, f);
  uint8_t ihdr[13] = {0};
  put32(ihdr, w), put32(ihdr + 4, h);
  ihdr[8] = (uint8_t)depth, ihdr[9] = (uint8_t)type;
  png_chunk(f, "IHDR", ihdr, 13);
  png_chunk(f, "IDAT", idat, (uint32_t)n);
  if (end)
    png_chunk(f, "IEND", NULL, 0);
  fclose(f);
}

// The start of the zlib stream of w x h RGB rows of zeros: a few hundred
// bytes, where the whole image would need at least w*h*3/1032.
static void png_claiming(const char *path, uint32_t w, uint32_t h) {
  uint8_t raw[65536] = {0}, z[1024];
  z_stream s = {0};
  ck_assert_int_eq(deflateInit(&s, 9), Z_OK);
  s.next_in = raw, s.avail_in = sizeof raw;
  s.next_out = z, s.avail_out = sizeof z;
  ck_assert_int_eq(deflate(&s, Z_SYNC_FLUSH), Z_OK);
  write_png_file(path, w, h, 8, 2, z, sizeof z - s.avail_out, false);
  deflateEnd(&s);
}

static void png_100000(const char *path) { png_claiming(path, 100000, 100000); }
static void png_15000(const char *path) { png_claiming(path, 15000, 15000); }
// Under the pixel limit (9400x9400 = 88,360,000), 265 MB of RGB.
static void png_9400(const char *path) { png_claiming(path, 9400, 9400); }

// Deflate bits, least significant first; Huffman codes most significant
// bit first (RFC 1951, 3.1.1).
typedef struct {
  uint8_t *p;
  size_t n;
  int bit;
} Bits;

static void put_bits(Bits *b, uint32_t v, int n) {
  for (int i = 0; i < n; i++, b->bit++) {
    if (b->bit == 8)
      b->n++, b->bit = 0;
    if ((v >> i) & 1)
      b->p[b->n] |= (uint8_t)(1 << b->bit);
  }
}

static void put_code(Bits *b, uint32_t code, int len) {
  for (int i = len - 1; i >= 0; i--)
    put_bits(b, (code >> i) & 1, 1);
}

// A zlib stream inflating to 1 + 258 * matches zero bytes at deflate's
// largest ratio: one dynamic block whose length code for 258 (symbol 285)
// and distance code for 1 are one bit each, so four matches take a byte.
// The data check is left out: nothing should read that far.
static uint8_t *zlib_bomb(size_t matches, size_t *size) {
  Bits b = {xc_calloc(matches / 4 + 64, 1), 2, 0};
  b.p[0] = 0x78, b.p[1] = 0x01;
  put_bits(&b, 1, 1); // BFINAL
  put_bits(&b, 2, 2); // dynamic Huffman codes
  put_bits(&b, 286 - 257, 5), put_bits(&b, 1 - 1, 5), put_bits(&b, 18 - 4, 4);
  // Code length codes, in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2
  // 14 1: 18 (a run of zeros) one bit, 1 and 2 two bits each.
  static const int cl_len[18] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2};
  for (int i = 0; i < 18; i++)
    put_bits(&b, cl_len[i], 3);
  // Canonical codes: 18 -> 0, 1 -> 10, 2 -> 11.
#define CL_1 put_code(&b, 2, 2)
#define CL_2 put_code(&b, 3, 2)
#define ZEROS(k) (put_code(&b, 0, 1), put_bits(&b, (k) - 11, 7))
  // Literal/length lengths: 0 -> 2, 1..255 -> 0, 256 -> 2, 257..284 -> 0,
  // 285 -> 1; the one distance code -> 1.
  CL_2, ZEROS(138), ZEROS(117), CL_2, ZEROS(28), CL_1, CL_1;
#undef CL_1
#undef CL_2
#undef ZEROS
  // Canonical codes: 285 -> 0, literal 0 -> 10, end of block -> 11.
  put_code(&b, 2, 2);
  for (size_t i = 0; i < matches; i++)
    put_bits(&b, 0, 2);
  put_code(&b, 3, 2);
  *size = b.n + 1;
  return b.p;
}

// A 1x1 grey PNG whose IDAT inflates to a gigabyte: its one row takes two
// bytes, and nothing after needs reading.
static void png_zlib_bomb(const char *path) {
  size_t n;
  uint8_t *z = zlib_bomb((1u << 30) / 258, &n);
  write_png_file(path, 1, 1, 8, 0, z, n, true);
  free(z);
}

//
// Hostile JPEG files
//

// A real 16x16 JPEG with the size in its SOF segment changed to w x h,
// and, when truncated, cut 40 bytes into the data of its first scan (so
// no EOI marker follows).
static void jpeg_claiming(const char *path, const char *kind, int w, int h, bool truncated) {
  uint8_t *img = td_image(0, 1, 16, 16, 3);
  td_write_jpeg(path, img, 16, 16, 3, kind, 90);
  free(img);
  long n;
  uint8_t *b = (uint8_t *)read_all(path, &n);
  long at = 2, sof = -1, cut = n;
  while (at + 4 <= n && b[at] == 0xff) {
    int marker = b[at + 1], len = b[at + 2] << 8 | b[at + 3];
    if (marker == 0xc0 || marker == 0xc2)
      sof = at;
    if (marker == 0xda) {
      cut = at + 2 + len + 40;
      break;
    }
    at += 2 + len;
  }
  ck_assert(sof > 0 && cut < n);
  b[sof + 5] = (uint8_t)(h >> 8), b[sof + 6] = (uint8_t)h;
  b[sof + 7] = (uint8_t)(w >> 8), b[sof + 8] = (uint8_t)w;
  td_write_bytes(path, b, truncated ? cut : n);
  free(b);
}

static void jpeg_65500(const char *path) { jpeg_claiming(path, "rgb", 65500, 65500, false); }
static void jpeg_65500_progressive(const char *path) {
  jpeg_claiming(path, "progressive", 65500, 65500, false);
}
static void jpeg_9400_cut(const char *path) { jpeg_claiming(path, "rgb", 9400, 9400, true); }
// libjpeg allocates every coefficient of a progressive image (530 MB here)
// before it reads the first scan.
static void jpeg_9400_progressive_cut(const char *path) {
  jpeg_claiming(path, "progressive", 9400, 9400, true);
}

//
// Entries of a data folder that are no files
//

static void make_fifo(const char *path) { ck_assert_int_eq(mkfifo(path, 0600), 0); }

static void link_dev_zero(const char *path) { ck_assert_int_eq(symlink("/dev/zero", path), 0); }

static void make_dir(const char *path) { ck_assert_int_eq(mkdir(path, 0700), 0); }

static void make_socket(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  ck_assert(strlen(path) < sizeof a.sun_path);
  strcpy(a.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  close(fd);
}

//
// Loading in a bounded child
//

typedef struct {
  const char *dir;
  int64_t max_pixels; // DataSpec.max_image_pixels
  bool strict;
  bool bounded; // limit the address space
  int want_n, want_bad;
} Job;

static DataSpec spec_for(const Job *j) {
  DataSpec s = {0};
  s.path = j->dir;
  s.train = true;
  s.c = 3, s.h = 8, s.w = 8;
  s.nclasses = 3;
  s.class_names = rgb_names;
  s.max_image_pixels = j->max_pixels;
  s.strict = j->strict;
  return s;
}

// The address space the child has before loading (VmSize) plus 256 MiB:
// room for the loader, its threads and small images; none for what the
// hostile files claim (265 MB and more).
static void limit_memory(void) {
  long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  ck_assert(f && fscanf(f, "%ld", &pages) == 1);
  fclose(f);
  rlim_t bytes = (rlim_t)pages * sysconf(_SC_PAGESIZE) + (256u << 20);
  struct rlimit r = {bytes, bytes};
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &r), 0);
}

// Exit status 0 when the load kept want_n images and skipped want_bad.
static void load_job(void *arg) {
  const Job *j = arg;
  if (j->bounded)
    limit_memory();
  // A loader blocked on a FIFO dies of SIGALRM (Check's handler, which
  // this process inherited, would kill the whole test); one that works too
  // long, of SIGXCPU. The work is bounded in CPU seconds, which a busy
  // machine does not stretch; the wall-clock alarm only catches a hang.
  signal(SIGALRM, SIG_DFL);
  alarm(120);
  struct rlimit cpu = {10, 10};
  setrlimit(RLIMIT_CPU, &cpu);
  DataSpec s = spec_for(j);
  Dataset *d = xc_load_dataset(&s);
  _exit(d->n == j->want_n && d->nbad == j->want_bad ? 0 : 3);
}

static double children_cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  return ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + ru.ru_stime.tv_sec +
         1e-6 * ru.ru_stime.tv_usec;
}

// Runs the job in a child; returns its stderr, *status and the CPU seconds
// it used (*seconds).
static char *run_job(Job *j, int *status, double *seconds) {
  double t = children_cpu_seconds();
  char *err = run_capturing_stderr(load_job, j, status);
  *seconds = children_cpu_seconds() - t;
  return err;
}

// A folder with one good photo and the hostile entry.
static char *folder_with(const char *name, void (*make)(const char *path), char **path) {
  char *dir = xc_join(tmpdir(), "data");
  td_mkdir(dir);
  uint8_t *img = td_image(0, 0, 12, 10, 3);
  td_write_png(xc_join(dir, "red.0.png"), img, 12, 10, 3, "rgb");
  free(img);
  *path = xc_join(dir, name);
  make(*path);
  return dir;
}

START_TEST(hostile_entries_skipped_fast) {
  static const struct {
    const char *name;
    void (*make)(const char *path);
    const char *why;
  } cases[] = {
      {"red.huge.png", png_100000, "100000x100000, 10000000000 pixels, over twice the limit"},
      {"red.big.png", png_15000, "15000x15000, 225000000 pixels, over twice the limit"},
      {"red.cut.png", png_9400, "the file is truncated"},
      {"red.bomb.png", png_zlib_bomb, NULL}, // a valid 1x1 image
      {"red.huge.jpg", jpeg_65500, "65500x65500, 4290250000 pixels, over twice the limit"},
      {"red.huge2.jpg", jpeg_65500_progressive, "65500x65500"},
      {"red.cut.jpg", jpeg_9400_cut, "the file is truncated"},
      {"red.cut2.jpg", jpeg_9400_progressive_cut, "the file is truncated"},
      {"red.fifo.jpg", make_fifo, "a FIFO, not a regular file"},
      {"red.zero.jpg", link_dev_zero, "a character device, not a regular file"},
      {"red.dir.jpg", make_dir, "a directory, not a regular file"},
      {"red.sock.png", make_socket, "a socket, not a regular file"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    char *path, *dir = folder_with(cases[c].name, cases[c].make, &path);
    Job j = {dir, 0, false, true, cases[c].why ? 1 : 2, cases[c].why ? 1 : 0};
    int status;
    double seconds;
    char *err = run_job(&j, &status, &seconds);
    ck_assert_msg(status == 0, "%s: status %d:\n%s", cases[c].name, status, err);
    ck_assert_msg(seconds < 0.5, "%s: %.2f CPU seconds", cases[c].name, seconds);
    if (cases[c].why) {
      char *want = xc_format("skipping %s: ", path);
      char *at = strstr(err, want);
      ck_assert_msg(at && strstr(at, cases[c].why), "%s: expected '%s%s' in:\n%s", cases[c].name,
                    want, cases[c].why, err);
    }
  }
}
END_TEST

// Under --strict a refused file is an error naming it, with exit status 1.
START_TEST(hostile_file_strict) {
  char *path, *dir = folder_with("red.huge.jpg", jpeg_65500, &path);
  Job j = {dir, 0, true, true, 1, 0};
  int status;
  double seconds;
  char *err = run_job(&j, &status, &seconds);
  ck_assert_int_eq(status, 1);
  ck_assert_msg(strstr(err, xc_format("error: %s: the image is 65500x65500", path)), "%s", err);
  ck_assert_msg(strstr(err, "--max-image-pixels"), "%s", err);
}
END_TEST

// Between the limit and twice it, PIL warns and reads the image; so do we,
// once for the data set. The limit can be set: at 100 pixels the 12x10
// photos (120) warn, at 59 (twice: 118) they are refused.
START_TEST(large_image_warns_and_loads) {
  // 9460x9460 = 89,491,600 pixels, just over 89,478,485: 89 MB of grey.
  char *dir = xc_join(tmpdir(), "data");
  td_mkdir(dir);
  int side = 9460;
  uint8_t *grey = xc_malloc((size_t)side * side);
  memset(grey, 100, (size_t)side * side);
  char *big = xc_join(dir, "blue.big.png");
  td_write_png(big, grey, side, side, 1, "grey");
  free(grey);
  Job j = {dir, 0, false, false, 1, 0};
  int status;
  double seconds;
  char *err = run_job(&j, &status, &seconds);
  ck_assert_msg(status == 0, "status %d:\n%s", status, err);
  ck_assert_msg(strstr(err, xc_format("warning: %s: 89491600 pixels, over the limit of 89478485",
                                      big)),
                "%s", err);
  Image img;
  char *why;
  ck_assert_msg(xc_image_load(big, &img, &why), "%s", why);
  ck_assert(img.w == side && img.h == side && img.c == 1 && img.px[12345] == 100);
  free(img.px);

  dir = xc_join(tmpdir(), "data");
  td_mkdir(dir);
  td_write_photo_folder(dir, rgb_names, 3, 2, 12, 10);
  Job warn = {dir, 100, false, false, 6, 0};
  err = run_job(&warn, &status, &seconds);
  ck_assert_msg(status == 0, "status %d:\n%s", status, err);
  ck_assert_msg(strstr(err, "120 pixels, over the limit of 100") &&
                    strstr(err, "as are 5 more images"),
                "%s", err);
  ck_assert_msg(!strstr(strstr(err, "over the limit") + 1, "over the limit"), "twice:\n%s", err);
  Job refuse = {dir, 59, false, false, 0, 6};
  err = run_job(&refuse, &status, &seconds);
  ck_assert_int_eq(status, 1); // no readable images
  ck_assert_msg(strstr(err, "12x10, 120 pixels, over twice the limit of 59"), "%s", err);
  ck_assert(!xc_image_load_max(xc_join(dir, "red.0.jpg"), 59, &img, &why));
  ck_assert(xc_image_load_max(xc_join(dir, "red.0.jpg"), 60, &img, &why));
  ck_assert(img.w == 12 && img.h == 10);
}
END_TEST

int main(void) {
  Suite *s = suite_create("runtime_limits");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 600); // wall clock: generous on a busy machine; the jobs are bounded in CPU time
  tcase_add_test(tc, hostile_entries_skipped_fast);
  tcase_add_test(tc, hostile_file_strict);
  tcase_add_test(tc, large_image_warns_and_loads);
  suite_add_tcase(s, tc);
  return run_suite(s);
}
