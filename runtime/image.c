// Image files to the model's input bytes: JPEG (libjpeg: baseline,
// progressive, grey-scale, CMYK) and PNG (libpng: 8/16-bit, palette, grey,
// alpha dropped) decoded to 8-bit grey or RGB, converted to the model's
// channel count, and resized like PIL's Image.resize(BILINEAR), which is what
// torchvision's Resize((h, w)) does on PIL images: a separable triangle
// filter widened by the scale factor when shrinking (antialiasing), with
// PIL's 22-bit fixed-point arithmetic so results match to the byte.
// cache.c keeps these bytes between runs: changing them bumps CACHE_VERSION.
#include "rt.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h> // after stdio.h: it uses FILE and size_t

bool xc_is_image_name(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot)
    return false;
  return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png");
}

//
// JPEG
//

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jmp;
  char msg[JMSG_LENGTH_MAX];
  bool truncated;
} JpegErr;

static void jpeg_on_error(j_common_ptr cinfo) {
  JpegErr *e = (JpegErr *)cinfo->err;
  cinfo->err->format_message(cinfo, e->msg);
  longjmp(e->jmp, 1);
}

// libjpeg only warns about a file that ends early and fills the rest with
// grey; PIL refuses such files ("image file is truncated"), and so do we.
static void jpeg_on_message(j_common_ptr cinfo, int level) {
  JpegErr *e = (JpegErr *)cinfo->err;
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
    e->truncated = true;
}

// PIL's MULDIV255: a*b/255 rounded, in integers.
static int muldiv255(int a, int b) {
  int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

static bool load_jpeg(FILE *fp, Image *img, char **err) {
  struct jpeg_decompress_struct cinfo;
  JpegErr jerr;
  uint8_t *volatile px = NULL;
  uint8_t *volatile row = NULL;
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.emit_message = jpeg_on_message;
  jerr.truncated = false;
  if (setjmp(jerr.jmp)) {
    *err = xc_format("not a valid JPEG: %s", jerr.msg);
    jpeg_destroy_decompress(&cinfo);
    free(px);
    free(row);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, fp);
  jpeg_read_header(&cinfo, TRUE);
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
  if (w <= 0 || h <= 0 || (int64_t)w * h > (1 << 28)) {
    strcpy(jerr.msg, "unreasonable image size");
    longjmp(jerr.jmp, 1);
  }
  px = xc_malloc((size_t)w * h * c);
  row = xc_malloc((size_t)w * nc);
  while (cinfo.output_scanline < (unsigned)h) {
    int y = cinfo.output_scanline;
    JSAMPROW r = row;
    if (jpeg_read_scanlines(&cinfo, &r, 1) != 1)
      break;
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
  if (cinfo.output_scanline < (unsigned)h || jerr.truncated) {
    strcpy(jerr.msg, "the file is truncated");
    longjmp(jerr.jmp, 1);
  }
  jpeg_finish_decompress(&cinfo);
  if (jerr.truncated) {
    strcpy(jerr.msg, "the file is truncated");
    longjmp(jerr.jmp, 1);
  }
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
} PngErr;

static void png_on_error(png_structp png, png_const_charp msg) {
  PngErr *e = png_get_error_ptr(png);
  snprintf(e->msg, sizeof e->msg, "%s", msg);
  longjmp(e->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {}

static bool load_png(FILE *fp, Image *img, char **err) {
  PngErr perr;
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &perr, png_on_error, png_on_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  uint8_t *volatile px = NULL;
  png_bytep *volatile rows = NULL;
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    *err = xc_format("out of memory");
    return false;
  }
  if (setjmp(perr.jmp)) {
    *err = xc_format("not a valid PNG: %s", perr.msg);
    png_destroy_read_struct(&png, &info, NULL);
    free(px);
    free(rows);
    return false;
  }
  png_init_io(png, fp);
  png_read_info(png, info);
  int w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (w <= 0 || h <= 0 || (int64_t)w * h > (1 << 28))
    png_error(png, "unreasonable image size");
  // Everything to 8-bit grey or RGB: palettes and low bit depths expand,
  // 16-bit keeps its high byte (as PIL does), alpha is dropped.
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  int interlace_passes = png_set_interlace_handling(png);
  (void)interlace_passes;
  png_read_update_info(png, info);
  int c = png_get_channels(png, info);
  if (c != 1 && c != 3)
    png_error(png, "unsupported channel layout");
  px = xc_malloc((size_t)w * h * c);
  rows = xc_malloc(sizeof(png_bytep) * h);
  for (int y = 0; y < h; y++)
    rows[y] = px + (size_t)y * w * c;
  png_read_image(png, rows);
  png_read_end(png, NULL);
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  *img = (Image){w, h, c, px};
  return true;
}

bool xc_image_load(const char *path, Image *img, char **err) {
  *err = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    *err = xc_format("cannot open: %s", strerror(errno));
    return false;
  }
  uint8_t magic[8] = {0};
  size_t got = fread(magic, 1, 8, fp);
  rewind(fp);
  bool ok;
  if (got >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) {
    ok = load_jpeg(fp, img, err);
  } else if (got == 8 && !png_sig_cmp(magic, 0, 8)) {
    ok = load_png(fp, img, err);
  } else {
    *err = xc_format(got == 0 ? "the file is empty" : "not a JPEG or PNG image");
    ok = false;
  }
  fclose(fp);
  return ok;
}

//
// Resizing, PIL's way
//

enum { PRECISION_BITS = 32 - 8 - 2 };

static double triangle(double x) {
  x = fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// For each output pixel, the first input pixel it reads, how many, and their
// fixed-point weights (ksize per output pixel).
typedef struct {
  int ksize;
  int *first, *count;
  int32_t *k;
} Coeffs;

static Coeffs make_coeffs(int in_size, int out_size) {
  double scale = (double)in_size / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = (int)ceil(support) * 2 + 1;
  c.first = xc_malloc(sizeof(int) * out_size);
  c.count = xc_malloc(sizeof(int) * out_size);
  c.k = xc_calloc((size_t)out_size * c.ksize, sizeof(int32_t));
  double *w = xc_malloc(sizeof(double) * c.ksize);
  for (int xx = 0; xx < out_size; xx++) {
    double center = (xx + 0.5) * scale;
    int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
    if (xmin < 0)
      xmin = 0;
    if (xmax > in_size)
      xmax = in_size;
    xmax -= xmin;
    double sum = 0.0;
    for (int x = 0; x < xmax; x++)
      sum += w[x] = triangle((x + xmin - center + 0.5) / filterscale);
    for (int x = 0; x < xmax; x++) {
      double v = sum != 0.0 ? w[x] / sum : w[x];
      c.k[xx * c.ksize + x] =
          (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  free(w);
  return c;
}

static void free_coeffs(Coeffs *c) {
  free(c->first);
  free(c->count);
  free(c->k);
}

static uint8_t clip8(int64_t v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

// One pass along x (stride c between neighbours) or along y (stride w*c).
static void resample_h(const uint8_t *in, int iw, int h, int c, uint8_t *out, int ow) {
  Coeffs k = make_coeffs(iw, ow);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < ow; x++)
      for (int ch = 0; ch < c; ch++) {
        int64_t acc = 1 << (PRECISION_BITS - 1);
        const uint8_t *src = in + ((size_t)y * iw + k.first[x]) * c + ch;
        const int32_t *kk = k.k + x * k.ksize;
        for (int i = 0; i < k.count[x]; i++)
          acc += (int64_t)src[i * c] * kk[i];
        out[((size_t)y * ow + x) * c + ch] = clip8(acc);
      }
  free_coeffs(&k);
}

static void resample_v(const uint8_t *in, int w, int ih, int c, uint8_t *out, int oh) {
  Coeffs k = make_coeffs(ih, oh);
  size_t stride = (size_t)w * c;
  for (int y = 0; y < oh; y++)
    for (size_t i = 0; i < stride; i++) {
      int64_t acc = 1 << (PRECISION_BITS - 1);
      const uint8_t *src = in + (size_t)k.first[y] * stride + i;
      const int32_t *kk = k.k + y * k.ksize;
      for (int j = 0; j < k.count[y]; j++)
        acc += (int64_t)src[j * stride] * kk[j];
      out[y * stride + i] = clip8(acc);
    }
  free_coeffs(&k);
}

// Horizontal first, then vertical, each rounded to bytes, as PIL does.
void xc_resize_hwc(const uint8_t *in, int iw, int ih, int c, uint8_t *out, int ow, int oh) {
  if (iw == ow && ih == oh) {
    memcpy(out, in, (size_t)iw * ih * c);
  } else if (ih == oh) {
    resample_h(in, iw, ih, c, out, ow);
  } else if (iw == ow) {
    resample_v(in, iw, ih, c, out, oh);
  } else {
    uint8_t *tmp = xc_malloc((size_t)ow * ih * c);
    resample_h(in, iw, ih, c, tmp, ow);
    resample_v(tmp, ow, ih, c, out, oh);
    free(tmp);
  }
}

// Grey to RGB repeats the value; RGB to grey is PIL's convert("L"):
// L = R * 299/1000 + G * 587/1000 + B * 114/1000 in 16-bit fixed point.
void xc_image_to_chw(const Image *img, int c, int h, int w, uint8_t *out) {
  size_t npx = (size_t)img->w * img->h;
  const uint8_t *src = img->px;
  uint8_t *conv = NULL;
  if (img->c != c) {
    conv = xc_malloc(npx * c);
    for (size_t i = 0; i < npx; i++) {
      if (c == 1) {
        const uint8_t *p = img->px + 3 * i;
        conv[i] = (uint8_t)((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
      } else {
        for (int ch = 0; ch < c; ch++)
          conv[i * c + ch] = img->px[i * img->c + (ch < img->c ? ch : 0)];
      }
    }
    src = conv;
  }
  uint8_t *hwc = xc_malloc((size_t)w * h * c);
  xc_resize_hwc(src, img->w, img->h, c, hwc, w, h);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int ch = 0; ch < c; ch++)
        out[((size_t)ch * h + y) * w + x] = hwc[((size_t)y * w + x) * c + ch];
  free(hwc);
  free(conv);
}
