// Images to a model's input size, as torchvision's Resize does on PIL
// images (bilinear, PIL's fixed-point resampling), and to its channels
// (PIL's convert). Apart from image.c, which decodes with libjpeg and
// libpng, so that a compiled model's library takes these alone. Out of
// memory is a return value here (a library must not exit its host); the
// executables' xc_image_to_chw makes it an error that exits.
#include "rt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

static void free_coeffs(Coeffs *c) {
  free(c->first);
  free(c->count);
  free(c->k);
}

// False when out of memory.
static bool make_coeffs(int in_size, int out_size, Coeffs *out) {
  double scale = (double)in_size / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = (int)ceil(support) * 2 + 1;
  c.first = malloc(sizeof(int) * out_size);
  c.count = malloc(sizeof(int) * out_size);
  c.k = calloc((size_t)out_size * c.ksize, sizeof(int32_t));
  double *w = malloc(sizeof(double) * c.ksize);
  if (!c.first || !c.count || !c.k || !w) {
    free_coeffs(&c);
    free(w);
    return false;
  }
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
  *out = c;
  return true;
}

static uint8_t clip8(int64_t v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

// One pass along x (stride c between neighbours) or along y (stride w*c).
static bool resample_h(const uint8_t *in, int iw, int h, int c, uint8_t *out, int ow) {
  Coeffs k;
  if (!make_coeffs(iw, ow, &k))
    return false;
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
  return true;
}

static bool resample_v(const uint8_t *in, int w, int ih, int c, uint8_t *out, int oh) {
  Coeffs k;
  if (!make_coeffs(ih, oh, &k))
    return false;
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
  return true;
}

// Horizontal first, then vertical, each rounded to bytes, as PIL does.
// False when out of memory.
static bool resize_hwc(const uint8_t *in, int iw, int ih, int c, uint8_t *out, int ow, int oh) {
  if (iw == ow && ih == oh) {
    memcpy(out, in, (size_t)iw * ih * c);
    return true;
  }
  if (ih == oh)
    return resample_h(in, iw, ih, c, out, ow);
  if (iw == ow)
    return resample_v(in, iw, ih, c, out, oh);
  uint8_t *tmp = malloc((size_t)ow * ih * c);
  bool ok = tmp && resample_h(in, iw, ih, c, tmp, ow) && resample_v(tmp, ow, ih, c, out, oh);
  free(tmp);
  return ok;
}

void xc_resize_hwc(const uint8_t *in, int iw, int ih, int c, uint8_t *out, int ow, int oh) {
  if (!resize_hwc(in, iw, ih, c, out, ow, oh))
    xc_die("free some memory", "out of memory resizing a %d x %d image", iw, ih);
}

// Grey to RGB repeats the value; RGB to grey is PIL's convert("L"):
// L = R * 299/1000 + G * 587/1000 + B * 114/1000 in 16-bit fixed point.
// False when out of memory.
bool xc_image_to_chw_try(const Image *img, int c, int h, int w, uint8_t *out) {
  size_t npx = (size_t)img->w * img->h;
  const uint8_t *src = img->px;
  uint8_t *conv = NULL;
  if (img->c != c) {
    conv = malloc(npx * c);
    if (!conv)
      return false;
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
  uint8_t *hwc = malloc((size_t)w * h * c);
  bool ok = hwc && resize_hwc(src, img->w, img->h, c, hwc, w, h);
  for (int y = 0; ok && y < h; y++)
    for (int x = 0; x < w; x++)
      for (int ch = 0; ch < c; ch++)
        out[((size_t)ch * h + y) * w + x] = hwc[((size_t)y * w + x) * c + ch];
  free(hwc);
  free(conv);
  return ok;
}

void xc_image_to_chw(const Image *img, int c, int h, int w, uint8_t *out) {
  if (!xc_image_to_chw_try(img, c, h, w, out))
    xc_die("free some memory", "out of memory converting a %d x %d image", img->w, img->h);
}
