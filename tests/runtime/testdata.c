// Writers of small test data sets (see testdata.h). Everything is
// synthetic and deterministic, so tests can assert exact pixels and labels.
#define _GNU_SOURCE
#include "testdata.h"

#include <errno.h>
#include <fcntl.h>
#include <png.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <zlib.h>

#include <jpeglib.h> // after stdio.h: it uses FILE and size_t

static void die(const char *what, const char *path) {
  fprintf(stderr, "testdata: cannot %s %s\n", what, path);
  exit(2);
}

uint8_t td_pixel(int label, int index, int x, int y, int ch) {
  uint32_t h = (uint32_t)(index * 7919 + x * 31 + y * 131 + ch * 17 + label * 1000003);
  h ^= h >> 13;
  h *= 0x5bd1e995;
  h ^= h >> 15;
  int noise = (int)(h % 41) - 20;
  int base = ch == label % 3 ? 200 : 50;
  return (uint8_t)(base + noise);
}

uint8_t *td_image(int label, int index, int w, int h, int c) {
  uint8_t *px = malloc((size_t)w * h * c);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int ch = 0; ch < c; ch++)
        px[((size_t)y * w + x) * c + ch] = td_pixel(label, index, x, y, ch);
  return px;
}

void td_write_cifar(const char *path, int n, int nclasses, int first_index) {
  FILE *f = fopen(path, "wb");
  if (!f)
    die("write", path);
  for (int i = 0; i < n; i++) {
    int label = (first_index + i) % nclasses;
    fputc(label, f);
    for (int ch = 0; ch < 3; ch++)
      for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++)
          fputc(td_pixel(label, first_index + i, x, y, ch), f);
  }
  fclose(f);
}

static void be32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static void write_maybe_gz(const char *path, const uint8_t *data, size_t n, bool gz) {
  if (gz) {
    gzFile g = gzopen(path, "wb");
    if (!g || gzwrite(g, data, (unsigned)n) != (int)n)
      die("write", path);
    gzclose(g);
  } else {
    td_write_bytes(path, data, (long)n);
  }
}

void td_write_idx(const char *dir, const char *prefix, int n, int side, int nclasses, bool gz) {
  size_t ilen = 16 + (size_t)n * side * side, llen = 8 + n;
  uint8_t *img = malloc(ilen), *lab = malloc(llen);
  be32(img, 0x803), be32(img + 4, n), be32(img + 8, side), be32(img + 12, side);
  be32(lab, 0x801), be32(lab + 4, n);
  for (int i = 0; i < n; i++) {
    lab[8 + i] = i % nclasses;
    for (int p = 0; p < side * side; p++)
      img[16 + (size_t)i * side * side + p] = td_pixel(i % nclasses, i, p % side, p / side, 0);
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte%s", dir, prefix, gz ? ".gz" : "");
  write_maybe_gz(path, img, ilen, gz);
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte%s", dir, prefix, gz ? ".gz" : "");
  write_maybe_gz(path, lab, llen, gz);
  free(img), free(lab);
}

// N x C x H x W images (IDX type 0x0804), pixel (x, y, ch) of sample i
// td_pixel(i % nclasses, i, x, y, ch), and their labels.
void td_write_idx4(const char *dir, const char *prefix, int n, int c, int h, int w, int nclasses) {
  size_t per = (size_t)c * h * w, ilen = 20 + n * per, llen = 8 + n;
  uint8_t *img = malloc(ilen), *lab = malloc(llen);
  be32(img, 0x804), be32(img + 4, n), be32(img + 8, c), be32(img + 12, h), be32(img + 16, w);
  be32(lab, 0x801), be32(lab + 4, n);
  for (int i = 0; i < n; i++) {
    lab[8 + i] = i % nclasses;
    for (int ch = 0; ch < c; ch++)
      for (int p = 0; p < h * w; p++)
        img[20 + i * per + (size_t)ch * h * w + p] = td_pixel(i % nclasses, i, p % w, p / w, ch);
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s-images-idx4-ubyte", dir, prefix);
  write_maybe_gz(path, img, ilen, false);
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, prefix);
  write_maybe_gz(path, lab, llen, false);
  free(img), free(lab);
}

void td_write_png(const char *path, const uint8_t *hwc, int w, int h, int c, const char *kind) {
  FILE *f = fopen(path, "wb");
  if (!f)
    die("write", path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png)))
    die("encode PNG", path);
  png_init_io(png, f);
  bool grey = !strncmp(kind, "grey", 4), b16 = strstr(kind, "16") != NULL;
  bool rgba = !strcmp(kind, "rgba"), palette = !strcmp(kind, "palette");
  int out_c = grey ? 1 : rgba ? 4 : palette ? 1 : 3;
  int type = grey      ? PNG_COLOR_TYPE_GRAY
             : rgba    ? PNG_COLOR_TYPE_RGBA
             : palette ? PNG_COLOR_TYPE_PALETTE
                       : PNG_COLOR_TYPE_RGB;
  png_set_IHDR(png, info, w, h, b16 ? 16 : 8, type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  // Palette images: the palette is a grey ramp, index = the first channel.
  if (palette) {
    png_color pal[256];
    for (int i = 0; i < 256; i++)
      pal[i].red = pal[i].green = pal[i].blue = (png_byte)i;
    png_set_PLTE(png, info, pal, 256);
  }
  png_write_info(png, info);
  int bytes = b16 ? 2 : 1;
  uint8_t *row = malloc((size_t)w * out_c * bytes);
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++)
      for (int ch = 0; ch < out_c; ch++) {
        const uint8_t *p = hwc + ((size_t)y * w + x) * c;
        uint8_t v = ch < c ? p[ch] : (ch == 3 ? 77 : p[0]);
        if (grey || palette)
          v = p[0];
        if (b16) {
          // 16-bit: high byte the value, low byte noise that must be dropped.
          row[((size_t)x * out_c + ch) * 2] = v;
          row[((size_t)x * out_c + ch) * 2 + 1] = (uint8_t)(x * 37 + y);
        } else {
          row[(size_t)x * out_c + ch] = v;
        }
      }
    png_write_row(png, row);
  }
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(row);
  fclose(f);
}

void td_write_jpeg(const char *path, const uint8_t *hwc, int w, int h, int c, const char *kind,
                   int quality) {
  FILE *f = fopen(path, "wb");
  if (!f)
    die("write", path);
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = w;
  cinfo.image_height = h;
  bool cmyk = !strcmp(kind, "cmyk"), grey = !strcmp(kind, "grey");
  cinfo.input_components = cmyk ? 4 : grey ? 1 : 3;
  cinfo.in_color_space = cmyk ? JCS_CMYK : grey ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (cmyk)
    jpeg_set_colorspace(&cinfo, JCS_CMYK);
  if (!strcmp(kind, "progressive"))
    jpeg_simple_progression(&cinfo);
  cinfo.write_Adobe_marker = cmyk;
  jpeg_start_compress(&cinfo, TRUE);
  int ic = cinfo.input_components;
  uint8_t *row = malloc((size_t)w * ic);
  while (cinfo.next_scanline < cinfo.image_height) {
    int y = cinfo.next_scanline;
    for (int x = 0; x < w; x++) {
      const uint8_t *p = hwc + ((size_t)y * w + x) * c;
      if (cmyk) {
        // Adobe-style inverted CMYK with no black: stored C = R, M = G, Y = B.
        for (int ch = 0; ch < 3; ch++)
          row[4 * x + ch] = p[ch < c ? ch : 0];
        row[4 * x + 3] = 255;
      } else if (grey) {
        row[x] = p[0];
      } else {
        for (int ch = 0; ch < 3; ch++)
          row[3 * x + ch] = p[ch < c ? ch : 0];
      }
    }
    JSAMPROW r = row;
    jpeg_write_scanlines(&cinfo, &r, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  free(row);
  fclose(f);
}

void td_write_bytes(const char *path, const void *data, long n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != (size_t)n)
    die("write", path);
  fclose(f);
}

void td_truncate_copy(const char *from, const char *to, double fraction) {
  FILE *f = fopen(from, "rb");
  if (!f)
    die("read", from);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *buf = malloc(n);
  if (fread(buf, 1, n, f) != (size_t)n)
    die("read", from);
  fclose(f);
  td_write_bytes(to, buf, (long)(n * fraction));
  free(buf);
}

char *td_mkdtemp(const char *parent) {
  char *path = malloc(strlen(parent) + 32);
  sprintf(path, "%s/tmp-XXXXXX", parent);
  if (!mkdtemp(path))
    die("create a directory in", parent);
  return path;
}

int td_run(const char *dir, const char *const *argv, const char *out, const char *err) {
  extern char **environ;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (out)
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (err)
    posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (dir)
    posix_spawn_file_actions_addchdir_np(&fa, dir);
  pid_t pid;
  int e = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (e) {
    errno = e;
    die("run", argv[0]);
  }
  int ws;
  while (waitpid(pid, &ws, 0) < 0)
    if (errno != EINTR)
      die("wait for", argv[0]);
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

void td_mkdir(const char *path) {
  if (mkdir(path, 0777) != 0)
    die("create", path);
}

void td_write_photo_folder(const char *dir, const char *const *classes, int nclasses, int per_class,
                           int w, int h) {
  char path[4096];
  for (int k = 0; k < nclasses; k++)
    for (int i = 0; i < per_class; i++) {
      uint8_t *img = td_image(k, i, w, h, 3);
      bool png = i % 2;
      snprintf(path, sizeof path, "%s/%s.%d.%s", dir, classes[k], i, png ? "png" : "jpg");
      if (png)
        td_write_png(path, img, w, h, 3, "rgb");
      else
        td_write_jpeg(path, img, w, h, 3, "rgb", 95);
      free(img);
    }
}

void td_write_image_folder(const char *dir, const char *const *classes, int nclasses,
                           int per_class, int w, int h) {
  char path[4096];
  for (int k = 0; k < nclasses; k++) {
    snprintf(path, sizeof path, "%s/%s", dir, classes[k]);
    td_mkdir(path);
    for (int i = 0; i < per_class; i++) {
      uint8_t *img = td_image(k, i, w, h, 3);
      snprintf(path, sizeof path, "%s/%s/%04d.png", dir, classes[k], i);
      td_write_png(path, img, w, h, 3, "rgb");
      free(img);
    }
  }
}
