// Data sets, loaded whole into memory as the model's input bytes (CHW,
// already resized): CIFAR-10 binary batches, MNIST-style IDX files (plain or
// gzip), folders of JPEG/PNG photos labelled by file name (cat.12.jpg), and
// torchvision ImageFolder trees (root/<class>/*.jpg). Images are decoded once,
// in parallel, before training starts, so later epochs cost no decoding (and
// with --cache later runs neither: cache.c); bad files are reported with
// their path and skipped (or fatal with --strict).
// Batches apply the training augmentation, then ToTensor and Normalize.
#define _GNU_SOURCE
#include "rt.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

void xc_free_dataset(Dataset *d) {
  if (!d)
    return;
  if (d->files)
    for (int64_t i = 0; i < d->n; i++)
      free(d->files[i]);
  free(d->files);
  free(d->pixels);
  free(d->labels);
  free(d->path);
  free(d);
}

static const char *data_hint(const DataSpec *s) {
  const char *f = s->format_hint && *s->format_hint ? s->format_hint : NULL;
  return xc_format("pass --data with %s%s%sdata set (a CIFAR-10 directory or .bin file, an IDX "
                   "directory, a folder of class-named photos, or an ImageFolder tree); "
                   "scripts/prepare_data.sh unpacks ../shared/data into build/data",
                   f && strchr("aeiouAEIOU", *f) ? "an " : "a ", f ? f : "", f ? " " : "");
}

// Which directory entries a listing keeps, given the name and whether it
// is a directory (after symbolic links).
typedef bool (*EntryFilter)(const char *name, bool is_dir);

static bool subdirs(const char *name, bool is_dir) { return is_dir; }
static bool non_dirs(const char *name, bool is_dir) { return !is_dir; }
// A photo folder's entries: whatever is not a folder (decoding reads only
// regular files and reports a FIFO, a device or a socket), and a folder
// named like a photo, which is reported too rather than passed over.
static bool photo_entries(const char *name, bool is_dir) {
  return !is_dir || xc_is_image_name(name);
}

// Directory entries (not "." files) that keep accepts, sorted by byte order.
static char **list_entries(const char *path, EntryFilter keep, int *count) {
  DIR *d = opendir(path);
  if (!d)
    xc_die("check the path", "cannot read directory %s: %s", path, strerror(errno));
  char **names = NULL;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char *full = xc_join(path, e->d_name);
    bool is_dir = xc_is_dir(full);
    free(full);
    if (!keep(e->d_name, is_dir))
      continue;
    names = xc_realloc(names, sizeof(char *) * (n + 1));
    names[n++] = xc_strdup(e->d_name);
  }
  closedir(d);
  if (n)
    qsort(names, n, sizeof(char *), xc_cmp_str);
  *count = n;
  return names;
}

// Subdirectories (dirs) or the other entries.
static char **list_dir(const char *path, bool dirs, int *count) {
  return list_entries(path, dirs ? subdirs : non_dirs, count);
}

static void free_names(char **names, int n) {
  for (int i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

// The file in dir whose name starts with prefix and contains part
// ("train-images" + "idx3"), or NULL.
static char *find_prefixed(const char *dir, const char *prefix, const char *part) {
  int n;
  char **names = list_dir(dir, false, &n);
  char *found = NULL;
  for (int i = 0; i < n && !found; i++)
    if (!strncmp(names[i], prefix, strlen(prefix)) && strstr(names[i], part))
      found = xc_join(dir, names[i]);
  free_names(names, n);
  return found;
}

static bool has_image_files(const char *dir) {
  int n;
  char **names = list_dir(dir, false, &n);
  bool any = false;
  for (int i = 0; i < n && !any; i++)
    any = xc_is_image_name(names[i]);
  free_names(names, n);
  return any;
}

const char *xc_detect_format(const char *path) {
  if (xc_is_file(path)) {
    const char *base = xc_basename(path);
    if (strstr(base, "idx3") || strstr(base, "idx4") || strstr(base, "idx1"))
      return "idx";
    size_t n = strlen(base);
    if (n > 4 && !strcmp(base + n - 4, ".bin"))
      return "cifar10";
    return NULL;
  }
  if (!xc_is_dir(path))
    return NULL;
  char *p;
  if ((p = find_prefixed(path, "data_batch_", ".bin")) ||
      (p = find_prefixed(path, "test_batch", ".bin"))) {
    free(p);
    return "cifar10";
  }
  if ((p = find_prefixed(path, "train-images", "idx3")) ||
      (p = find_prefixed(path, "t10k-images", "idx3")) ||
      (p = find_prefixed(path, "train-images", "idx4")) ||
      (p = find_prefixed(path, "t10k-images", "idx4"))) {
    free(p);
    return "idx";
  }
  if (has_image_files(path))
    return "folder";
  int n;
  char **subs = list_dir(path, true, &n);
  bool tree = false;
  for (int i = 0; i < n && !tree; i++) {
    char *sub = xc_join(path, subs[i]);
    tree = has_image_files(sub);
    free(sub);
  }
  free_names(subs, n);
  return tree ? "imagefolder" : NULL;
}

static Dataset *new_dataset(const DataSpec *s, const char *format) {
  Dataset *d = xc_calloc(1, sizeof *d);
  d->path = xc_strdup(s->path);
  d->format = format;
  d->c = s->c, d->h = s->h, d->w = s->w;
  return d;
}

static size_t sample_bytes(const Dataset *d) { return (size_t)d->c * d->h * d->w; }

// Stores one HWC image of any size as sample i in the model's layout.
static void put_hwc(Dataset *d, int64_t i, const uint8_t *hwc, int w, int h, int c) {
  Image img = {w, h, c, (uint8_t *)hwc};
  xc_image_to_chw(&img, d->c, d->h, d->w, d->pixels + i * sample_bytes(d));
}

static void check_label(const DataSpec *s, int label, const char *file, int64_t record) {
  if (label < 0 || label >= s->nclasses)
    xc_die("the file does not belong to this model's classes, or it is corrupt",
           "%s: record %lld has label %d, but the model has %d classes", file, (long long)record,
           label, s->nclasses);
}

//
// CIFAR-10 binary: records of 1 label byte + 3072 bytes (1024 R, G, B)
//

enum { CIFAR_SIDE = 32, CIFAR_PIXELS = 3 * 32 * 32, CIFAR_RECORD = 1 + CIFAR_PIXELS };

// Tensor data whose stored samples (c, h, w) are not the model's input: an
// error naming both shapes, unless the YAML asked for the conversion.
static void check_stored_shape(const DataSpec *s, const char *file, int c, int h, int w) {
  bool channels = c != s->c, size = h != s->h || w != s->w;
  // Conversions are PIL's: between RGB and grey, and resizing either.
  bool convertible = (c == 1 || c == 3) && (s->c == 1 || s->c == 3);
  bool need_convert = channels && !s->convert, need_resize = size && !s->resize;
  if (need_convert || need_resize || ((channels || size) && !convertible))
    xc_die(!convertible
               ? "store the images with the model's shape, or change input: to match them"
               : xc_format("change input: to {channels: %d, height: %d, width: %d}, or convert "
                           "on loading as a torchvision transform would: data: {%s%s%s}",
                           c, h, w, need_convert ? (s->c == 3 ? "convert: rgb" : "convert: grey") : "",
                           need_convert && need_resize ? ", " : "", need_resize ? "resize: true" : ""),
           "%s holds %dx%dx%d images but the model's input is %dx%dx%d", file, c, h, w, s->c,
           s->h, s->w);
}

// a * b, or death with a hint when it does not fit in memory's terms.
static int64_t bytes_of(const char *file, int64_t a, int64_t b) {
  if (a < 0 || b < 0 || (b && a > ((int64_t)1 << 40) / b))
    xc_die("use a smaller data set or input", "%s: %lld x %lld bytes is more than this runtime "
           "loads (1 TiB)", file, (long long)a, (long long)b);
  return a * b;
}

static void load_cifar_file(Dataset *d, const DataSpec *s, const char *file) {
  FILE *fp = fopen(file, "rb");
  if (!fp)
    xc_die(data_hint(s), "cannot open %s: %s", file, strerror(errno));
  struct stat st;
  if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode))
    xc_die(data_hint(s), "%s: not a regular file", file);
  int64_t size = st.st_size;
  if (size <= 0 || size % CIFAR_RECORD)
    xc_die("CIFAR-10 binary files hold records of 3073 bytes (cifar-10-binary.tar.gz, not the "
           "Python version)",
           "%s: size %lld is not a multiple of 3073 bytes", file, (long long)size);
  check_stored_shape(s, file, 3, CIFAR_SIDE, CIFAR_SIDE);
  int64_t count = size / CIFAR_RECORD;
  d->pixels = xc_realloc(d->pixels, bytes_of(file, d->n + count, sample_bytes(d)));
  d->labels = xc_realloc(d->labels, bytes_of(file, d->n + count, sizeof(int32_t)));
  uint8_t rec[CIFAR_RECORD], hwc[CIFAR_PIXELS];
  bool same = d->c == 3 && d->h == CIFAR_SIDE && d->w == CIFAR_SIDE;
  for (int64_t r = 0; r < count; r++, d->n++) {
    if (fread(rec, 1, CIFAR_RECORD, fp) != CIFAR_RECORD)
      xc_die(NULL, "%s: read error at record %lld", file, (long long)r);
    check_label(s, rec[0], file, r);
    d->labels[d->n] = rec[0];
    if (same) {
      memcpy(d->pixels + d->n * sample_bytes(d), rec + 1, CIFAR_PIXELS);
      continue;
    }
    for (int p = 0; p < 1024; p++)
      for (int ch = 0; ch < 3; ch++)
        hwc[3 * p + ch] = rec[1 + ch * 1024 + p];
    put_hwc(d, d->n, hwc, CIFAR_SIDE, CIFAR_SIDE, 3);
  }
  fclose(fp);
}

static Dataset *load_cifar(const DataSpec *s) {
  Dataset *d = new_dataset(s, "cifar10");
  if (xc_is_file(s->path)) {
    load_cifar_file(d, s, s->path);
    return d;
  }
  int n;
  char **names = list_dir(s->path, false, &n);
  for (int i = 0; i < n; i++) {
    const char *want = s->train ? "data_batch_" : "test_batch";
    size_t len = strlen(names[i]);
    if (strncmp(names[i], want, strlen(want)) || len < 4 || strcmp(names[i] + len - 4, ".bin"))
      continue;
    char *file = xc_join(s->path, names[i]);
    load_cifar_file(d, s, file);
    free(file);
  }
  free_names(names, n);
  if (!d->n)
    xc_die(data_hint(s), "%s: no %s in this CIFAR-10 directory", s->path,
           s->train ? "data_batch_*.bin" : "test_batch.bin");
  return d;
}

//
// IDX (MNIST, Fashion-MNIST): big-endian header, then bytes; gzip or plain
//

// An IDX file of unsigned bytes (gzip or plain): its dimensions into dims
// (*ndims of them, one of the counts in `allowed`: labels 1, images 3 (N, H,
// W: grey) or 4 (N, C, H, W)) and its data. Sizes are checked before any
// arithmetic, and memory grows with the bytes actually read, so a small file
// claiming a huge size costs nothing.
enum { IDX_MAX_BYTES = 1 << 30 }; // 1 GiB: 15x Fashion-MNIST's training images

static uint8_t *read_idx(const char *file, const int *allowed, int nallowed, int *ndims,
                         int64_t *dims) {
  if (!xc_is_file(file))
    xc_die("check the path", "%s: not a regular file", file);
  gzFile gz = gzopen(file, "rb");
  if (!gz)
    xc_die("check the path", "cannot open %s: %s", file, strerror(errno));
  uint8_t head[4 + 4 * 4];
  if (gzread(gz, head, 4) != 4)
    xc_die("the file is truncated or not an IDX file", "%s: cannot read the IDX header", file);
  bool known_dims = false;
  for (int i = 0; i < nallowed; i++)
    known_dims |= head[3] == allowed[i];
  if (head[0] || head[1] || head[2] != 0x08 || !known_dims)
    xc_die("MNIST images are IDX files of type 0x0803 (or 0x0804: N, C, H, W), labels 0x0801",
           "%s: not an IDX file of unsigned bytes with %d dimensions (magic %02x%02x%02x%02x)",
           file, allowed[0], head[0], head[1], head[2], head[3]);
  *ndims = head[3];
  if (gzread(gz, head + 4, 4 * *ndims) != 4 * *ndims)
    xc_die("the file is truncated or not an IDX file", "%s: cannot read the IDX header", file);
  int64_t total = 1;
  for (int i = 0; i < *ndims; i++) {
    const uint8_t *p = head + 4 + 4 * i;
    dims[i] = (int64_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
    if (dims[i] <= 0 || dims[i] > IDX_MAX_BYTES || total > IDX_MAX_BYTES / dims[i])
      xc_die("the file is damaged, or larger than this runtime loads (1 GiB)",
             "%s: unreasonable IDX dimensions", file);
    total *= dims[i];
  }
  int64_t cap = total < (1 << 24) ? total : 1 << 24;
  uint8_t *data = xc_malloc(cap);
  for (int64_t got = 0; got < total;) {
    if (got == cap) {
      cap = cap * 2 < total ? cap * 2 : total;
      data = xc_realloc(data, cap);
    }
    int r = gzread(gz, data + got, (unsigned)(cap - got));
    if (r <= 0)
      xc_die("the file is truncated; download it again", "%s: %lld of %lld data bytes", file,
             (long long)got, (long long)total);
    got += r;
  }
  gzclose(gz);
  return data;
}

static Dataset *load_idx(const DataSpec *s) {
  char *images, *labels;
  if (xc_is_file(s->path)) {
    images = xc_strdup(s->path);
    // train-images-idx3-ubyte.gz -> train-labels-idx1-ubyte.gz
    labels = xc_strdup(s->path);
    char *b = (char *)xc_basename(labels), *p;
    if ((p = strstr(b, "images")))
      memcpy(p, "labels", 6);
    if ((p = strstr(b, "idx3")) || (p = strstr(b, "idx4")))
      p[3] = '1';
    if (!strcmp(labels, images) || !xc_is_file(labels))
      xc_die("keep the labels file next to the images file", "%s: no labels file %s next to it",
             s->path, labels);
  } else {
    const char *pre = s->train ? "train" : "t10k";
    char *ip = xc_format("%s-images", pre), *lp = xc_format("%s-labels", pre);
    images = find_prefixed(s->path, ip, "idx3");
    if (!images)
      images = find_prefixed(s->path, ip, "idx4");
    labels = find_prefixed(s->path, lp, "idx1");
    if (!images || !labels)
      xc_die(data_hint(s), "%s: no %s-idx3-ubyte[.gz] (or idx4) and %s-idx1-ubyte[.gz] in this directory",
             s->path, ip, lp);
    free(ip), free(lp);
  }
  int64_t idim[4], ldim[1];
  int nd, nl;
  uint8_t *px = read_idx(images, (int[]){3, 4}, 2, &nd, idim);
  uint8_t *lab = read_idx(labels, (int[]){1}, 1, &nl, ldim);
  if (ldim[0] != idim[0])
    xc_die("the two files come from different releases",
           "%s has %lld images but %s has %lld labels", images, (long long)idim[0], labels,
           (long long)ldim[0]);
  // idx3: N x H x W grey; idx4: N x C x H x W.
  int ic = nd == 4 ? (int)idim[1] : 1, ih = (int)idim[nd - 2], iw = (int)idim[nd - 1];
  if (ih > 65535 || iw > 65535 || ic > 4)
    xc_die("images are at most 65535 pixels on a side, with at most 4 channels",
           "%s: images of %dx%dx%d", images, ic, ih, iw);
  check_stored_shape(s, images, ic, ih, iw);
  Dataset *d = new_dataset(s, "idx");
  d->n = idim[0];
  d->pixels = xc_malloc(bytes_of(images, d->n, sample_bytes(d)));
  d->labels = xc_malloc(bytes_of(labels, d->n, sizeof(int32_t)));
  size_t stored = (size_t)ic * ih * iw;
  bool same = d->c == ic && d->h == ih && d->w == iw;
  uint8_t *hwc = same ? NULL : xc_malloc(stored);
  for (int64_t i = 0; i < d->n; i++) {
    check_label(s, lab[i], labels, i);
    d->labels[i] = lab[i];
    const uint8_t *chw = px + i * stored;
    if (same) {
      memcpy(d->pixels + i * sample_bytes(d), chw, stored);
      continue;
    }
    for (int p = 0; p < ih * iw; p++)
      for (int ch = 0; ch < ic; ch++)
        hwc[(size_t)p * ic + ch] = chw[(size_t)ch * ih * iw + p];
    put_hwc(d, i, hwc, iw, ih, ic);
  }
  free(hwc);
  free(px), free(lab), free(images), free(labels);
  return d;
}

//
// Folders of photos
//

// The class whose name is one of the file name's words (split at anything
// but letters and digits; "cat.12.jpg" -> cat), else the one class whose name
// appears inside it; -1 if none or several.
static int label_from_name(const char *name, const DataSpec *s) {
  int found = -1, matches = 0;
  char *copy = xc_strdup(name), *save = NULL;
  char *dot = strrchr(copy, '.');
  if (dot)
    *dot = '\0';
  for (char *p = copy; *p; p++)
    if (!isalnum((unsigned char)*p))
      *p = ' ';
  for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
    for (int c = 0; c < s->nclasses; c++)
      if (!strcasecmp(tok, s->class_names[c]) && found != c) {
        found = c;
        matches++;
      }
  free(copy);
  if (matches == 1)
    return found;
  if (matches > 1)
    return -1;
  for (int c = 0; c < s->nclasses; c++)
    if (strcasestr(name, s->class_names[c])) {
      found = c;
      matches++;
    }
  return matches == 1 ? found : -1;
}

static void add_file(FileList *l, char *path, char *name, int label) {
  l->path = xc_realloc(l->path, sizeof(char *) * (l->n + 1));
  l->name = xc_realloc(l->name, sizeof(char *) * (l->n + 1));
  l->label = xc_realloc(l->label, sizeof(int32_t) * (l->n + 1));
  l->path[l->n] = path;
  l->name[l->n] = name;
  l->label[l->n++] = label;
}

static void report_bad(const DataSpec *s, int64_t *nbad, const char *path, const char *why) {
  if (s->strict)
    xc_die("fix or remove the file, or run without --strict to skip bad files", "%s: %s", path,
           why);
  if (!s->quiet && *nbad < 20)
    xc_warn(NULL, "skipping %s: %s", path, why);
  (*nbad)++;
}

// Keeps the training or the validation part of a sorted file list: a
// permutation seeded by split_seed puts round(n * val_split) files in the
// validation part. Depends only on the names and the seed.
static void apply_split(FileList *l, const DataSpec *s) {
  if (s->split == XC_SPLIT_ALL || s->val_split <= 0)
    return;
  int64_t nval = (int64_t)llround(l->n * (double)s->val_split);
  int32_t *perm = xc_malloc(sizeof(int32_t) * (l->n + 1));
  for (int64_t i = 0; i < l->n; i++)
    perm[i] = (int32_t)i;
  XcRng rng;
  xc_rng_seed(&rng, s->split_seed, 4);
  xc_shuffle(&rng, perm, l->n);
  bool *in_val = xc_calloc(l->n + 1, 1);
  for (int64_t i = 0; i < nval; i++)
    in_val[perm[i]] = true;
  int64_t k = 0;
  for (int64_t i = 0; i < l->n; i++) {
    if (in_val[i] == (s->split == XC_SPLIT_VAL)) {
      l->path[k] = l->path[i];
      l->name[k] = l->name[i];
      l->label[k++] = l->label[i];
    } else {
      free(l->path[i]);
      free(l->name[i]);
    }
  }
  l->n = k;
  free(perm);
  free(in_val);
}

int64_t xc_files_decoded;

// PIL warns about an image over its pixel limit and reads it; one warning
// for the data set, naming the first such file (the rest were refused).
static void warn_large(const DataSpec *s, const FileList *l, const int64_t *source_pixels) {
  int64_t limit = xc_pixel_limit(s->max_image_pixels), count = 0, first = -1;
  for (int64_t i = 0; i < l->n; i++)
    if (source_pixels[i] > limit && count++ == 0)
      first = i;
  if (count && !s->quiet)
    xc_warn("images over twice the limit are refused; --max-image-pixels N sets the limit",
            "%s: %lld pixels, over the limit of %lld (a decompression bomb?)%s; read anyway, as "
            "PIL does",
            l->path[first], (long long)source_pixels[first], (long long)limit,
            count > 1 ? xc_format(", as are %lld more images", (long long)(count - 1)) : "");
}

// Splits the list, decodes every file on all threads (or takes the bytes
// from the cache), then keeps the good ones in order. A cached file that did
// not decode is reported again, so nbad and the messages stay the same.
static Dataset *decode_files(const DataSpec *s, FileList *l, const char *format, int64_t nbad) {
  apply_split(l, s);
  uint8_t key[32];
  if (s->cache)
    xc_cache_key(s, format, l, key);
  Dataset *d = new_dataset(s, format);
  size_t bytes = sample_bytes(d);
  d->pixels = xc_malloc(l->n * bytes + 1);
  char **err = xc_calloc(l->n + 1, sizeof(char *));
  int64_t *source_pixels = xc_calloc(l->n + 1, sizeof(int64_t)); // w*h of each file
  if (!s->cache || !xc_cache_load(s, format, key, l, d->pixels, err, source_pixels)) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < l->n; i++) {
      Image img;
      if (xc_image_load_max(l->path[i], s->max_image_pixels, &img, &err[i])) {
        source_pixels[i] = (int64_t)img.w * img.h;
        xc_image_to_chw(&img, d->c, d->h, d->w, d->pixels + i * bytes);
        free(img.px);
      }
    }
    xc_files_decoded += l->n;
    if (s->cache)
      xc_cache_save(s, format, key, l, d->pixels, err, source_pixels);
  }
  warn_large(s, l, source_pixels);
  free(source_pixels);
  d->labels = xc_malloc(sizeof(int32_t) * (l->n + 1));
  d->files = xc_malloc(sizeof(char *) * (l->n + 1));
  for (int64_t i = 0; i < l->n; i++) {
    if (err[i]) {
      report_bad(s, &nbad, l->path[i], err[i]);
      free(err[i]);
      free(l->name[i]);
    } else {
      if (d->n != i)
        memmove(d->pixels + d->n * bytes, d->pixels + i * bytes, bytes);
      d->labels[d->n] = l->label[i];
      d->files[d->n++] = l->name[i];
    }
    free(l->path[i]);
  }
  free(err);
  free(l->path), free(l->name), free(l->label);
  d->nbad = nbad;
  if (nbad && !s->quiet)
    xc_warn(nbad > 20 ? "the first 20 are listed above" : NULL,
            "%s: skipped %lld unreadable file%s", s->path, (long long)nbad, nbad == 1 ? "" : "s");
  if (!d->n)
    xc_die(data_hint(s), "%s: no readable images", s->path);
  return d;
}

static void check_channels(const DataSpec *s) {
  if (s->c != 1 && s->c != 3)
    xc_die("photos have 1 (grey) or 3 (RGB) channels; set input.channels to 1 or 3",
           "the model takes %d channels", s->c);
}

static char *class_list(const DataSpec *s) {
  char *list = xc_strdup("");
  for (int c = 0; c < s->nclasses; c++) {
    char *t = xc_format("%s%s%s", list, c ? ", " : "", s->class_names[c]);
    free(list);
    list = t;
  }
  return list;
}

static Dataset *load_folder(const DataSpec *s) {
  check_channels(s);
  int n;
  char **names = list_entries(s->path, photo_entries, &n);
  FileList l = {0};
  int64_t nbad = 0;
  for (int i = 0; i < n; i++) {
    char *path = xc_join(s->path, names[i]);
    int label = label_from_name(names[i], s);
    if (label < 0) {
      char *why = xc_format("the file name contains none of the class names (or several)");
      report_bad(s, &nbad, path, why);
      free(why), free(path), free(names[i]);
      continue;
    }
    add_file(&l, path, names[i], label);
  }
  free(names);
  if (!l.n && nbad)
    xc_die(xc_format("name each photo after its class, e.g. %s.1.jpg; the model's classes are: %s",
                     s->class_names[0], class_list(s)),
           "%s: no file name contains one of the model's class names", s->path);
  return decode_files(s, &l, "folder", nbad);
}

static Dataset *load_image_folder(const DataSpec *s) {
  check_channels(s);
  int nsub;
  char **subs = list_dir(s->path, true, &nsub);
  FileList l = {0};
  for (int i = 0; i < nsub; i++) {
    int label = -1;
    for (int c = 0; c < s->nclasses; c++)
      if (!strcmp(subs[i], s->class_names[c]))
        label = c;
    if (label < 0) {
      char *list = class_list(s);
      xc_die(xc_format("an ImageFolder tree has one folder per class; the model's classes are: %s",
                       list),
             "%s: folder '%s' is not one of the model's classes", s->path, subs[i]);
    }
    char *dir = xc_join(s->path, subs[i]);
    int n;
    char **names = list_entries(dir, photo_entries, &n);
    for (int j = 0; j < n; j++) {
      add_file(&l, xc_join(dir, names[j]), xc_format("%s/%s", subs[i], names[j]), label);
      free(names[j]);
    }
    free(names);
    free(dir);
  }
  free_names(subs, nsub);
  return decode_files(s, &l, "imagefolder", 0);
}

Dataset *xc_load_dataset(const DataSpec *s) {
  if (!s->path || !*s->path)
    xc_die(data_hint(s), "no data: the model names no %s path", s->train ? "training" : "test");
  if (!xc_is_dir(s->path) && !xc_is_file(s->path))
    xc_die(data_hint(s), "data path %s does not exist", s->path);
  const char *format = xc_detect_format(s->path);
  // A directory holding one unpacked archive: cifar-10-batches-bin/.
  if (!format && xc_is_dir(s->path)) {
    char *sub = xc_join(s->path, "cifar-10-batches-bin");
    if (xc_is_dir(sub)) {
      DataSpec t = *s;
      t.path = sub;
      return xc_load_dataset(&t);
    }
    free(sub);
  }
  if (!format)
    xc_die(data_hint(s),
           "%s: cannot tell what data set this is (no data_batch_*.bin, "
           "*-images-idx3-ubyte, photos, or class folders of photos)",
           s->path);
  Dataset *d;
  if (!strcmp(format, "cifar10"))
    d = load_cifar(s);
  else if (!strcmp(format, "idx"))
    d = load_idx(s);
  else if (!strcmp(format, "folder"))
    d = load_folder(s);
  else
    d = load_image_folder(s);
  return d;
}

bool xc_use_val_split(const XcModel *m) {
  return m->val_split > 0 && !xc_is_dir(m->test_path) && !xc_is_file(m->test_path);
}

DataSpec xc_data_spec(const XcModel *m, const char *path, bool train, bool strict, bool quiet) {
  DataSpec s = {0};
  s.path = path;
  s.train = train;
  s.val_split = m->val_split;
  s.split = xc_use_val_split(m) ? (train ? XC_SPLIT_TRAIN : XC_SPLIT_VAL) : XC_SPLIT_ALL;
  s.split_seed = (uint64_t)m->seed;
  s.strict = strict;
  s.quiet = quiet;
  s.c = m->channels, s.h = m->height, s.w = m->width;
  s.convert = m->convert, s.resize = m->resize;
  s.nclasses = m->nclasses;
  s.class_names = m->class_names;
  s.format_hint = m->data_format;
  return s;
}

//
// Batches
//

// xc_to_tensor of each of the 256 byte values, once, instead of two
// divisions per pixel.
void xc_transform_tables(Transform *t) {
  for (int c = 0; c < 4; c++)
    for (int u = 0; u < 256; u++)
      t->table[c][u] = xc_to_tensor((uint8_t)u, t->mean[c], t->std[c]);
}

// torchvision's RandomCrop(size, padding=p) pads with zeros and picks the
// top-left corner uniformly; RandomHorizontalFlip mirrors with p = 0.5.
void xc_transform(const Transform *t, const uint8_t *src, int c, int h, int w, float *dst,
                  XcRng *rng) {
  int dy = 0, dx = 0;
  bool flip = false;
  if (rng && t->crop_padding > 0) {
    int p = t->crop_padding;
    dy = (int)xc_rng_below(rng, 2 * p + 1) - p;
    dx = (int)xc_rng_below(rng, 2 * p + 1) - p;
  }
  if (rng && t->flip)
    flip = xc_rng_float(rng) < 0.5f;
  if (!dst)
    return; // the draws alone: a rank's loader passes over other ranks' samples
  for (int ch = 0; ch < c; ch++) {
    const float *table = t->table[ch < 4 ? ch : 0];
    for (int y = 0; y < h; y++) {
      float *out = dst + ((size_t)ch * h + y) * w;
      int sy = y + dy;
      if (sy < 0 || sy >= h) { // a padding row: byte 0
        for (int x = 0; x < w; x++)
          out[x] = table[0];
        continue;
      }
      const uint8_t *row = src + ((size_t)ch * h + sy) * w;
      if (!flip && dx == 0) { // evaluation, and no shift drawn: no test per pixel
        for (int x = 0; x < w; x++)
          out[x] = table[row[x]];
        continue;
      }
      for (int x = 0; x < w; x++) {
        int sx = (flip ? w - 1 - x : x) + dx;
        out[x] = table[sx >= 0 && sx < w ? row[sx] : 0];
      }
    }
  }
}

void xc_make_batch(const Dataset *d, const int32_t *order, int b, const Transform *t, XcRng *aug,
                   float *images, void *labels, bool float_labels) {
  size_t floats = sample_bytes(d);
  for (int i = 0; i < b; i++) {
    int64_t k = order[i];
    xc_transform(t, d->pixels + k * floats, d->c, d->h, d->w, images + i * floats, aug);
    if (float_labels)
      ((float *)labels)[i] = (float)d->labels[k];
    else
      ((int32_t *)labels)[i] = d->labels[k];
  }
}
