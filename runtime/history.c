// The training history next to the weights: NAME.history.csv with one row
// per epoch, and NAME.curves.svg, two plots (training loss, validation
// accuracy) against the epoch that any browser opens. Both are rewritten
// after every epoch, so an interrupted run still leaves its curves.
#include "rt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void write_csv(const char *path, const EpochRecord *r, int n) {
  char *tmp = xc_format("%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    xc_warn("check that the directory is writable", "cannot write %s: %s", path, strerror(errno));
    return;
  }
  fprintf(f, "epoch,step,train_loss,val_accuracy,seconds,images_per_s,lr\n");
  for (int i = 0; i < n; i++) {
    fprintf(f, "%d,%lld,%.9g,", r[i].epoch, (long long)r[i].step, r[i].train_loss);
    if (!isnan(r[i].val_acc))
      fprintf(f, "%.6f", r[i].val_acc);
    fprintf(f, ",%.3f,%.1f,%.9g\n", r[i].seconds, r[i].images_per_s, r[i].lr);
  }
  if (fclose(f) != 0 || rename(tmp, path) != 0)
    xc_warn(NULL, "cannot write %s: %s", path, strerror(errno));
  free(tmp);
}

// A "nice" step (1, 2 or 5 times a power of ten) giving about five ticks.
static double nice_step(double range) {
  if (range <= 0)
    return 1;
  double raw = range / 5, p = pow(10, floor(log10(raw)));
  double m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

// One plot in the box (x0, y0, w, h); values are y per epoch, NAN skipped.
static void plot(FILE *f, double x0, double y0, double w, double h, const char *title,
                 const char *color, const EpochRecord *r, int n, bool acc) {
  double lo = INFINITY, hi = -INFINITY;
  int count = 0;
  for (int i = 0; i < n; i++) {
    double v = acc ? r[i].val_acc * 100 : r[i].train_loss;
    if (!isfinite(v))
      continue;
    lo = fmin(lo, v), hi = fmax(hi, v);
    count++;
  }
  fprintf(f, "<text x='%.1f' y='%.1f' font-size='15' font-weight='bold'>%s</text>\n", x0, y0 - 12,
          title);
  fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", x0,
          y0, w, h);
  if (!count) {
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' fill='#888'>no data</text>\n",
            x0 + w / 2, y0 + h / 2);
    return;
  }
  if (acc) {
    lo = fmax(0, floor(lo / 10) * 10), hi = fmin(100, ceil(hi / 10) * 10);
  }
  if (hi - lo < 1e-9)
    lo -= 0.5, hi += 0.5;
  double step = nice_step(hi - lo);
  lo = floor(lo / step) * step, hi = ceil(hi / step) * step;
  int e0 = r[0].epoch, e1 = r[n - 1].epoch;
  double span = e1 > e0 ? e1 - e0 : 1;
#define X(e) (x0 + ((e)-e0) / span * w)
#define Y(v) (y0 + h - ((v)-lo) / (hi - lo) * h)
  for (double v = lo; v <= hi + step / 2; v += step) {
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", x0, Y(v), x0 + w,
            Y(v));
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%g%s</text>\n", x0 - 5,
            Y(v) + 4, v, acc ? "%" : "");
  }
  int estep = (int)ceil(nice_step(span));
  for (int e = e0; e <= e1; e += estep > 0 ? estep : 1)
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%d</text>\n", X(e),
            y0 + h + 15, e);
  fprintf(f, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>epoch</text>\n",
          x0 + w / 2, y0 + h + 32);
  fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", color);
  for (int i = 0; i < n; i++) {
    double v = acc ? r[i].val_acc * 100 : r[i].train_loss;
    if (isfinite(v))
      fprintf(f, "%.1f,%.1f ", X(r[i].epoch), Y(v));
  }
  fputs("'/>\n", f);
  for (int i = 0; i < n; i++) {
    double v = acc ? r[i].val_acc * 100 : r[i].train_loss;
    if (isfinite(v))
      fprintf(
          f,
          "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'><title>epoch %d: %.4g%s</title></circle>\n",
          X(r[i].epoch), Y(v), color, r[i].epoch, v, acc ? "%" : "");
  }
#undef X
#undef Y
}

static void write_svg(const char *path, const char *model, const EpochRecord *r, int n) {
  char *tmp = xc_format("%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    xc_warn("check that the directory is writable", "cannot write %s: %s", path, strerror(errno));
    return;
  }
  fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='900' height='360' "
             "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n");
  fprintf(f, "<text x='450' y='22' font-size='16' text-anchor='middle'>%s: %d epoch%s</text>\n",
          model, n, n == 1 ? "" : "s");
  plot(f, 70, 70, 340, 220, "training loss", "#1f77b4", r, n, false);
  plot(f, 520, 70, 340, 220, "validation accuracy", "#d62728", r, n, true);
  fputs("</svg>\n", f);
  if (fclose(f) != 0 || rename(tmp, path) != 0)
    xc_warn(NULL, "cannot write %s: %s", path, strerror(errno));
  free(tmp);
}

void xc_write_history(const char *csv_path, const char *svg_path, const char *model,
                      const EpochRecord *r, int n) {
  if (n <= 0)
    return;
  write_csv(csv_path, r, n);
  write_svg(svg_path, model, r, n);
}
