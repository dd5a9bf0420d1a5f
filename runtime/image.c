// Image files to the model's input bytes: JPEG (libjpeg: baseline,
// progressive, grey-scale, CMYK) and PNG (libpng: 8/16-bit, palette, grey,
// alpha dropped) decoded to 8-bit grey or RGB, converted to the model's
// channel count, and resized like PIL's Image.resize(BILINEAR), which is what
// torchvision's Resize((h, w)) does on PIL images: a separable triangle
// filter widened by the scale factor when shrinking (antialiasing), with
// PIL's 22-bit fixed-point arithmetic so results match to the byte.
// A file's cost is bounded before decoding: only regular files are read,
// and the size in the header is checked against PIL's pixel limit.
// cache.c keeps these bytes between runs: changing them bumps CACHE_VERSION.
#include "rt.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h> // after stdio.h: it uses FILE and size_t

bool xc_is_image_name(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot)
    return false;
  return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png");
}

//
// What a file may cost
//

// PIL's guard against decompression bombs (Image._decompression_bomb_check):
// an image of more than MAX_IMAGE_PIXELS pixels warns, one of more than twice
// that is refused. Checked from the header, before any decoding work, so a
// file of a few bytes claiming 65500x65500 costs nothing.
int64_t xc_pixel_limit(int64_t max_image_pixels) {
  return max_image_pixels > 0 ? max_image_pixels : XC_MAX_IMAGE_PIXELS;
}

static char *check_pixels(int64_t w, int64_t h, int64_t max_image_pixels) {
  int64_t twice = 2 * xc_pixel_limit(max_image_pixels);
  uint64_t w1 = w > 1 ? (uint64_t)w : 1, h1 = h > 1 ? (uint64_t)h : 1; // PIL's max(1, w)
  if (w1 <= (uint64_t)twice / h1)
    return NULL;
  return xc_format("the image is %llux%llu, %llu pixels, over twice the limit of %lld "
                   "(a decompression bomb?); --max-image-pixels raises the limit",
                   (unsigned long long)w1, (unsigned long long)h1,
                   (unsigned long long)(w1 * h1), (long long)twice / 2);
}

static const char *file_kind(mode_t mode) {
  return S_ISDIR(mode)    ? "a directory"
         : S_ISFIFO(mode) ? "a FIFO"
         : S_ISCHR(mode)  ? "a character device"
         : S_ISBLK(mode)  ? "a block device"
         : S_ISSOCK(mode) ? "a socket"
                          : "not a regular file";
}

// Only regular files are read (after symbolic links): a FIFO would block the
// run forever and a device would never end. stat() first, so a device is
// never opened at all; O_NONBLOCK and fstat() for what is there by the time
// of the open(), so a FIFO swapped in cannot block either.
int xc_open_regular(const char *path, char **err) {
  struct stat st;
  if (stat(path, &st) != 0) {
    *err = xc_format("cannot open: %s", strerror(errno));
    return -1;
  }
  int fd = -1;
  if (S_ISREG(st.st_mode)) {
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
      *err = xc_format("cannot open: %s", strerror(errno));
      if (fd >= 0)
        close(fd);
      return -1;
    }
  }
  if (!S_ISREG(st.st_mode)) {
    *err = xc_format("%s, not a regular file", file_kind(st.st_mode));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

//
// JPEG
//

// More scans than any encoder writes (libjpeg's progressive scripts have 10
// or fewer); each scan walks every block of the image again, so a small file
// of empty scans would otherwise cost minutes (nvImageCodec's default, after
// Cure53's audit of libjpeg-turbo).
enum { MAX_JPEG_SCANS = 256 };

typedef struct {
  struct jpeg_error_mgr pub;
  struct jpeg_progress_mgr progress;
  jmp_buf jmp;
  char msg[JMSG_LENGTH_MAX];
  char *own; // a complete message of ours instead of "not a valid JPEG: msg"
} JpegErr;

static void jpeg_on_error(j_common_ptr cinfo) {
  JpegErr *e = (JpegErr *)cinfo->err;
  cinfo->err->format_message(cinfo, e->msg);
  longjmp(e->jmp, 1);
}

static noreturn void jpeg_fail(JpegErr *e, const char *msg) {
  snprintf(e->msg, sizeof e->msg, "%s", msg);
  longjmp(e->jmp, 1);
}

// libjpeg only warns about a file that ends early and makes up the rest;
// PIL refuses such files ("image file is truncated"), and so do we, at once
// rather than after decoding the made-up part.
static void jpeg_on_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
    jpeg_fail((JpegErr *)cinfo->err, "the file is truncated");
}

static void jpeg_count_scans(j_common_ptr cinfo) {
  if (((j_decompress_ptr)cinfo)->input_scan_number > MAX_JPEG_SCANS)
    jpeg_fail((JpegErr *)cinfo->err, "too many scans (a decompression bomb?)");
}

// Whether the bytes from offset on hold an EOI marker (FF D9). libjpeg reads
// to EOI, so a file without one is truncated; this finds out before
// jpeg_start_decompress allocates the image (for progressive files, all of
// its coefficients), at the cost of one read of the file.
static bool has_eoi_after(FILE *fp, long offset) {
  long back = ftell(fp);
  bool found = false;
  uint8_t buf[1 << 16];
  int prev = -1;
  size_t n;
  if (back < 0 || fseek(fp, offset, SEEK_SET) != 0)
    return true; // cannot tell: let libjpeg find out
  while (!found && (n = fread(buf, 1, sizeof buf, fp)) > 0) {
    found = prev == 0xff && buf[0] == 0xd9;
    for (const uint8_t *p = buf; !found && (p = memchr(p, 0xff, buf + n - 1 - p)); p++)
      found = p[1] == 0xd9;
    prev = buf[n - 1];
  }
  fseek(fp, back, SEEK_SET);
  return found;
}

// PIL's MULDIV255: a*b/255 rounded, in integers.
static int muldiv255(int a, int b) {
  int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

static bool load_jpeg(FILE *fp, int64_t max_pixels, Image *img, char **err) {
  struct jpeg_decompress_struct cinfo;
  JpegErr jerr;
  uint8_t *volatile px = NULL;
  uint8_t *volatile row = NULL;
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.emit_message = jpeg_on_message;
  jerr.progress.progress_monitor = jpeg_count_scans;
  jerr.own = NULL;
  if (setjmp(jerr.jmp)) {
    *err = jerr.own ? jerr.own : xc_format("not a valid JPEG: %s", jerr.msg);
    jpeg_destroy_decompress(&cinfo);
    free(px);
    free(row);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &jerr.progress;
  jpeg_stdio_src(&cinfo, fp);
  jpeg_read_header(&cinfo, TRUE);
  // Grey, YCbCr/RGB and CMYK/YCCK: what PIL reads (modes L, RGB, CMYK).
  if (cinfo.num_components != 1 && cinfo.num_components != 3 && cinfo.num_components != 4)
    jpeg_fail(&jerr, "not 1, 3 or 4 colour components");
  if ((jerr.own = check_pixels(cinfo.image_width, cinfo.image_height, max_pixels)))
    longjmp(jerr.jmp, 1);
  if (!has_eoi_after(fp, ftell(fp) - (long)cinfo.src->bytes_in_buffer))
    jpeg_fail(&jerr, "the file is truncated");
  bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  if (cmyk)
    cinfo.out_color_space = JCS_CMYK;
  else if (cinfo.jpeg_color_space == JCS_GRAYSCALE)
    cinfo.out_color_space = JCS_GRAYSCALE;
  else
    cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  int w = cinfo.output_width, h = cinfo.output_height, nc = cinfo.output_components;
  int c = cmyk ? 3 : nc;
  px = xc_malloc((size_t)w * h * c);
  row = xc_malloc((size_t)w * nc);
  while (cinfo.output_scanline < (unsigned)h) {
    int y = cinfo.output_scanline;
    JSAMPROW r = row;
    if (jpeg_read_scanlines(&cinfo, &r, 1) != 1)
      jpeg_fail(&jerr, "the file is truncated");
    uint8_t *out = px + (size_t)y * w * c;
    if (!cmyk) {
      memcpy(out, row, (size_t)w * c);
      continue;
    }
    // Adobe (Photoshop) CMYK JPEGs store inverted values; PIL reads them
    // as "CMYK;I" and converts with r = (255 - c) * (255 - k) / 255.
    bool inverted = cinfo.saw_Adobe_marker;
    for (int x = 0; x < w; x++) {
      const uint8_t *s = row + 4 * x;
      int k = inverted ? 255 - s[3] : s[3], nk = 255 - k;
      for (int ch = 0; ch < 3; ch++) {
        int v = inverted ? 255 - s[ch] : s[ch];
        out[3 * x + ch] = (uint8_t)(nk - muldiv255(v, nk));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  free(row);
  *img = (Image){w, h, c, px};
  return true;
}

//
// PNG
//

typedef struct {
  jmp_buf jmp;
  char msg[200];
  FILE *fp;
  bool interlaced;
  uint32_t height;
  bool rows_done; // the jump is the end of a good image, not an error
} PngErr;

static void png_on_error(png_structp png, png_const_charp msg) {
  PngErr *e = png_get_error_ptr(png);
  snprintf(e->msg, sizeof e->msg, "%s", msg);
  longjmp(e->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {}

// libpng reads on after the last row (png_read_finish_IDAT, inside the last
// png_read_row) to inflate the rest of the compressed data and check it;
// extra data can inflate to 1032 times its size. The rows are already in
// our image by then, so the first read after them ends the image, as PIL
// ends once the rows are complete.
static void png_read_file(png_structp png, png_bytep data, size_t n) {
  PngErr *e = png_get_io_ptr(png);
  e->rows_done = e->interlaced ? png_get_current_pass_number(png) >= 7
                               : png_get_current_row_number(png) >= e->height;
  if (e->rows_done)
    longjmp(e->jmp, 1);
  if (fread(data, 1, n, e->fp) != n)
    png_error(png, "the file is truncated");
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

// Walks the chunks (length, type, data, CRC) before libpng reads anything:
// checks the size in IHDR, and that the IDAT chunks hold enough data for the
// rows it promises. Deflate turns one byte into at most 1032 (a 258-byte
// match coded in two one-bit codes), so fewer IDAT bytes than the rows'
// bytes / 1032 is a truncated file, refused before the image is allocated.
// NULL when libpng may go on (it still checks everything else).
static char *png_precheck(FILE *fp, int64_t max_pixels) {
  struct stat st;
  if (fstat(fileno(fp), &st) != 0 || fseek(fp, 8, SEEK_SET) != 0)
    return xc_format("cannot read: %s", strerror(errno));
  int64_t w = 0, h = 0, bits = 0, idat = 0, pos = 8;
  uint8_t hd[8 + 13];
  for (bool first = true; fread(hd, 1, 8, fp) == 8; first = false) {
    int64_t len = be32(hd);
    pos += 8;
    if (len > 0x7fffffff)
      return xc_format("not a valid PNG: a chunk of %lld bytes", (long long)len);
    if (first) {
      if (memcmp(hd + 4, "IHDR", 4) || len != 13 || fread(hd + 8, 1, 13, fp) != 13)
        return xc_format("not a valid PNG: no IHDR chunk at the start");
      w = be32(hd + 8), h = be32(hd + 12);
      char *bomb = check_pixels(w, h, max_pixels);
      if (bomb)
        return bomb;
      // Bits per pixel: the bit depth times the samples of the colour type
      // (grey 1, RGB 3, palette 1, grey+alpha 2, RGBA 4).
      static const int samples[7] = {1, 0, 3, 1, 2, 0, 4};
      int type = hd[8 + 9];
      bits = hd[8 + 8] * (type < 7 && samples[type] ? samples[type] : 1);
      len = 0, pos += 13;
    } else if (!memcmp(hd + 4, "IDAT", 4)) {
      idat += len < st.st_size - pos ? len : st.st_size - pos;
    } else if (!memcmp(hd + 4, "IEND", 4)) {
      break;
    }
    pos += len + 4;
    if (pos > st.st_size || fseek(fp, pos, SEEK_SET) != 0)
      break;
  }
  rewind(fp);
  if (w * h * bits / 8 > 1032 * idat + 1024)
    return xc_format("not a valid PNG: the file is truncated (%lld bytes of image data for "
                     "%lldx%lld pixels)",
                     (long long)idat, (long long)w, (long long)h);
  return NULL;
}

static bool load_png(FILE *fp, int64_t max_pixels, Image *img, char **err) {
  if ((*err = png_precheck(fp, max_pixels)))
    return false;
  PngErr perr = {.fp = fp, .height = UINT32_MAX}; // no rows done while reading the header
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &perr, png_on_error, png_on_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  uint8_t *volatile px = NULL;
  png_bytep *volatile rows = NULL;
  volatile int w = 0, h = 0, c = 0;
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    *err = xc_format("out of memory");
    return false;
  }
  if (setjmp(perr.jmp)) {
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    if (perr.rows_done) {
      *img = (Image){w, h, c, px};
      return true;
    }
    *err = xc_format("not a valid PNG: %s", perr.msg);
    free(px);
    return false;
  }
  // Ancillary chunks (text, ICC profiles, gamma, ...) do not change the
  // bytes we decode, and compressed ones could inflate a thousandfold each:
  // skip them unread, as libpng keeps only IHDR, PLTE, tRNS, IDAT and IEND.
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
  png_set_read_fn(png, &perr, png_read_file);
  png_read_info(png, info);
  w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  perr.height = h;
  perr.interlaced = png_get_interlace_type(png, info) != PNG_INTERLACE_NONE;
  // Everything to 8-bit grey or RGB: palettes and low bit depths expand,
  // 16-bit keeps its high byte (as PIL does), alpha is dropped.
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  int interlace_passes = png_set_interlace_handling(png);
  (void)interlace_passes;
  png_read_update_info(png, info);
  c = png_get_channels(png, info);
  if (c != 1 && c != 3)
    png_error(png, "unsupported channel layout");
  px = xc_malloc((size_t)w * h * c);
  rows = xc_malloc(sizeof(png_bytep) * h);
  for (int y = 0; y < h; y++)
    rows[y] = px + (size_t)y * w * c;
  png_read_image(png, rows);
  // No png_read_end either: what follows the rows is no pixels.
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  *img = (Image){w, h, c, px};
  return true;
}

bool xc_image_load(const char *path, Image *img, char **err) {
  return xc_image_load_max(path, 0, img, err);
}

bool xc_image_load_max(const char *path, int64_t max_pixels, Image *img, char **err) {
  *err = NULL;
  int fd = xc_open_regular(path, err);
  if (fd < 0)
    return false;
  FILE *fp = fdopen(fd, "rb");
  if (!fp) {
    *err = xc_format("cannot open: %s", strerror(errno));
    close(fd);
    return false;
  }
  uint8_t magic[8] = {0};
  size_t got = fread(magic, 1, 8, fp);
  rewind(fp);
  bool ok;
  if (got >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) {
    ok = load_jpeg(fp, max_pixels, img, err);
  } else if (got == 8 && !png_sig_cmp(magic, 0, 8)) {
    ok = load_png(fp, max_pixels, img, err);
  } else {
    *err = xc_format(got == 0 ? "the file is empty" : "not a JPEG or PNG image");
    ok = false;
  }
  fclose(fp);
  return ok;
}
