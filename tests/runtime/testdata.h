// Writers of small data sets for the runtime's tests, in every format the
// loaders read: CIFAR-10 .bin, IDX (plain and gzip), PNG (8/16-bit, grey,
// palette, alpha) and JPEG (baseline, progressive, grey, CMYK) files, plus
// broken ones (a truncated JPEG, a text file named .jpg).
#ifndef XENTCC_TESTDATA_H
#define XENTCC_TESTDATA_H

#include <stdbool.h>
#include <stdint.h>

// The pixel (x, y, ch) of synthetic image `index` of class `label`: class k
// is bright in channel k % 3 and dark elsewhere, with a little seeded noise,
// so a linear model can learn the classes.
uint8_t td_pixel(int label, int index, int x, int y, int ch);
// An HWC image of that kind.
uint8_t *td_image(int label, int index, int w, int h, int c);

void td_write_cifar(const char *path, int n, int nclasses, int first_index);
void td_write_idx4(const char *dir, const char *prefix, int n, int c, int h, int w, int nclasses);
void td_write_idx(const char *dir, const char *prefix, int n, int side, int nclasses, bool gz);
// kind: "rgb", "grey", "rgba", "palette", "rgb16", "grey16"
void td_write_png(const char *path, const uint8_t *hwc, int w, int h, int c, const char *kind);
// kind: "rgb", "grey", "progressive", "cmyk"
void td_write_jpeg(const char *path, const uint8_t *hwc, int w, int h, int c, const char *kind,
                   int quality);
void td_write_bytes(const char *path, const void *data, long n);
void td_truncate_copy(const char *from, const char *to, double fraction);
char *td_mkdtemp(const char *parent);
void td_mkdir(const char *path);
// Runs argv[0] (looked up in PATH unless it names a path) with argv, from
// an argument vector (never a shell), in dir (NULL: here), its stdout and
// stderr into the files out and err (NULL: inherited); returns the exit
// status, or 128 + the signal that ended it.
int td_run(const char *dir, const char *const *argv, const char *out, const char *err);
// A folder of photos named CLASS.I.EXT for the fake models' classes.
void td_write_photo_folder(const char *dir, const char *const *classes, int nclasses, int per_class,
                           int w, int h);
// An ImageFolder tree: dir/CLASS/NNNN.png, per_class RGB PNGs of w x h each.
void td_write_image_folder(const char *dir, const char *const *classes, int nclasses,
                           int per_class, int w, int h);

#endif
