// The training history next to the weights: NAME.history.csv with one row
// per epoch (the columns of Keras's CSVLogger: train and validation loss
// and accuracy, lr, and the speed), and NAME.curves.svg, three panels
// (loss, accuracy, learning rate) against the epoch that any browser
// opens. Both are replaced whole after every epoch. The history's
// deterministic columns also travel in the checkpoint (encode/decode
// below), so --resume continues it instead of starting over.
#include "rt.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The columns, in order; the last two are timings, which the checkpoint
// does not keep (a resumed run's checkpoint must be byte-identical to an
// uninterrupted one's), so --resume takes them from the old CSV.
static const char csv_header[] =
    "epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_s,seconds";
enum { NCOLS = 9, NSTORED = 7 };

static double get(const EpochRecord *r, int c) {
  const double v[NCOLS] = {r->epoch,   (double)r->step, r->train_loss,   r->train_acc, r->val_loss,
                           r->val_acc, r->lr,           r->images_per_s, r->seconds};
  return v[c];
}

static void set(EpochRecord *r, int c, double v) {
  double *cols[NCOLS] = {&r->epoch,   NULL,   &r->train_loss,   &r->train_acc, &r->val_loss,
                         &r->val_acc, &r->lr, &r->images_per_s, &r->seconds};
  if (c == 1)
    r->step = v >= 0 && v <= 9e18 ? (int64_t)v : -1; // NaN never reaches the conversion
  else if (c == 6)
    r->lr = fabs(v) <= FLT_MAX ? (float)v : NAN;
  else
    *cols[c] = v;
}

// A number as the CSV and the checkpoint write it: the shortest text that
// reads back exactly; empty for NaN (no evaluation, no logits).
static void put_number(FILE *f, double v) {
  char buf[32];
  if (isfinite(v))
    fputs(xc_shortest(v, buf), f);
}

// The learning rate is the float the step was given: its shortest text as
// a float (0.0125, not 0.012500000186264515), read back as that float.
static void put_float(FILE *f, float v) {
  char buf[32];
  for (int digits = 1; digits <= 9; digits++) {
    snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (strtof(buf, NULL) == v)
      break;
  }
  fputs(buf, f);
}

static void put_row(FILE *f, const EpochRecord *r, int ncols, char sep) {
  for (int c = 0; c < ncols; c++) {
    if (c)
      fputc(',', f);
    switch (c) {
    case 1: fprintf(f, "%lld", (long long)r->step); break;
    case 6:
      if (isfinite(r->lr))
        put_float(f, (float)r->lr);
      break;
    case 7:
    case 8:
      if (isfinite(get(r, c))) // timings: a tenth of an image, a microsecond
        fprintf(f, c == 7 ? "%.1f" : "%.6f", get(r, c));
      break;
    default: put_number(f, get(r, c));
    }
  }
  fputc(sep, f);
}

char *xc_history_encode(const EpochRecord *r, int n) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    xc_die(NULL, "out of memory");
  for (int i = 0; i < n; i++)
    put_row(f, &r[i], NSTORED, ';');
  if (fclose(f) != 0)
    xc_die(NULL, "out of memory");
  return buf;
}

// Parses one field: empty is NaN; otherwise a whole number (what %.17g
// wrote) or nothing.
static bool field(const char **p, double *v) {
  const char *s = *p;
  if (*s == ',' || *s == ';' || *s == '\n' || *s == '\r' || !*s) {
    *v = NAN;
    return true;
  }
  char *end;
  errno = 0;
  *v = strtod(s, &end);
  if (end == s || errno == ERANGE || !isfinite(*v))
    return false;
  *p = end;
  return true;
}

bool xc_history_decode(const char *s, EpochRecord **out, int *n, char **err) {
  *out = NULL, *n = 0;
  int cap = 0;
  for (const char *p = s; *p;) {
    EpochRecord r = {.images_per_s = NAN, .seconds = NAN};
    for (int c = 0; c < NSTORED; c++) {
      double v;
      if ((c && *p++ != ',') || !field(&p, &v)) {
        free(*out);
        *err = xc_format("row %d, column %d is not a number", *n + 1, c + 1);
        return false;
      }
      set(&r, c, v);
    }
    // Epochs 1, 2, 3, ... in order, steps growing: the rows of one run.
    if (*p++ != ';' || r.epoch != *n + 1 || r.step < 1 || r.step > 2000000000 ||
        (*n && r.step <= (*out)[*n - 1].step)) {
      free(*out);
      *err = xc_format("row %d is not epoch %d of a run", *n + 1, *n + 1);
      return false;
    }
    if (*n == cap) {
      cap = cap ? 2 * cap : 16;
      *out = xc_realloc(*out, sizeof **out * cap);
    }
    (*out)[(*n)++] = r;
  }
  return true;
}

// The timing columns of rows an earlier run wrote to csv_path for the same
// epochs and steps; rows it does not have keep NaN. A missing or foreign
// file is no error: only the speed of those epochs is then unknown.
void xc_history_restore_times(const char *csv_path, EpochRecord *r, int n) {
  char *why;
  int fd = xc_open_regular(csv_path, &why);
  if (fd < 0) {
    free(why);
    return;
  }
  FILE *f = fdopen(fd, "r");
  if (!f) {
    close(fd);
    return;
  }
  char line[1024];
  bool header = true;
  for (int lines = 0; fgets(line, sizeof line, f) && lines < 10000000; lines++) {
    if (header) {
      header = false;
      if (strncmp(line, csv_header, strlen(csv_header)))
        break;
      continue;
    }
    EpochRecord row = {0};
    const char *p = line;
    bool ok = true;
    for (int c = 0; c < NCOLS && ok; c++) {
      double v;
      ok = (!c || *p++ == ',') && field(&p, &v);
      if (ok)
        set(&row, c, v);
    }
    if (!ok || !(row.epoch >= 1 && row.epoch <= n) || row.epoch != floor(row.epoch))
      continue;
    EpochRecord *mine = &r[(int)row.epoch - 1];
    if (mine->step == row.step) {
      mine->images_per_s = row.images_per_s;
      mine->seconds = row.seconds;
    }
  }
  fclose(f);
}

static void write_csv(const char *path, const EpochRecord *r, int n) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    xc_die(NULL, "out of memory");
  fprintf(f, "%s\n", csv_header);
  for (int i = 0; i < n; i++)
    put_row(f, &r[i], NCOLS, '\n');
  fclose(f);
  if (!xc_replace_file(path, buf, len))
    xc_warn("check that the directory is writable", "cannot write %s: %s", path, strerror(errno));
  free(buf);
}

//
// The curves
//

// A "nice" step (1, 2 or 5 times a power of ten) giving about five ticks.
static double nice_step(double range) {
  if (range <= 0)
    return 1;
  double raw = range / 5, p = pow(10, floor(log10(raw)));
  double m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

typedef struct {
  const char *name;
  const char *color;
  int col;     // a column of the CSV
  bool dashed; // validation curves
} Series;

// One panel in the box (x0, y0, w, h): each series' finite values against
// the epoch, with a legend. percent: values are fractions shown as %.
static void plot(FILE *f, double x0, double y0, double w, double h, const char *title,
                 const Series *s, int ns, const EpochRecord *r, int n, bool percent) {
  double lo = INFINITY, hi = -INFINITY, scale = percent ? 100 : 1;
  int count = 0;
  for (int k = 0; k < ns; k++)
    for (int i = 0; i < n; i++) {
      double v = get(&r[i], s[k].col) * scale;
      if (isfinite(v))
        lo = fmin(lo, v), hi = fmax(hi, v), count++;
    }
  fprintf(f, "<text x='%.1f' y='%.1f' font-size='15' font-weight='bold'>%s</text>\n", x0, y0 - 12,
          title);
  // The legend, right-aligned above the box.
  double lx = x0 + w;
  for (int k = ns - 1; k >= 0; k--) {
    lx -= 8 * strlen(s[k].name) + 34;
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2'%s/>"
            "<text x='%.1f' y='%.1f' font-size='12'>%s</text>\n",
            lx, y0 - 16, lx + 20, y0 - 16, s[k].color,
            s[k].dashed ? " stroke-dasharray='5,3'" : "", lx + 24, y0 - 12, s[k].name);
  }
  fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", x0,
          y0, w, h);
  if (!count) {
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' fill='#888'>no data</text>\n",
            x0 + w / 2, y0 + h / 2);
    return;
  }
  if (percent) {
    lo = fmax(0, floor(lo / 10) * 10), hi = fmin(100, ceil(hi / 10) * 10);
    if (hi - lo < 10)
      lo = fmax(0, hi - 10), hi = lo + 10;
  } else if (hi - lo <= 1e-9 * fabs(hi)) { // one value (a constant lr): 0 to twice it
    double v = hi;
    lo = v > 0 ? 0 : v < 0 ? 2 * v : -1, hi = v > 0 ? 2 * v : v < 0 ? 0 : 1;
  } else if (lo >= 0 && lo - (hi - lo) * 0.1 < 0) {
    lo = 0; // losses and rates start the axis at 0 when it is close
  }
  double step = nice_step(hi - lo);
  lo = floor(lo / step) * step, hi = ceil(hi / step) * step;
  double e0 = fmin(1, r[0].epoch), e1 = r[n - 1].epoch;
  double span = e1 > e0 ? e1 - e0 : 1;
#define X(e) (x0 + ((e)-e0) / span * w)
#define Y(v) (y0 + h - ((v)-lo) / (hi - lo) * h)
  for (double v = lo; v <= hi + step / 2; v += step) {
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", x0, Y(v), x0 + w,
            Y(v));
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%.4g%s</text>\n", x0 - 5,
            Y(v) + 4, fabs(v) < step * 1e-6 ? 0 : v, percent ? "%" : "");
  }
  int estep = (int)ceil(nice_step(span));
  for (int e = (int)ceil(e0); e <= e1 + 1e-9; e += estep > 0 ? estep : 1)
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%d</text>\n", X(e),
            y0 + h + 15, e);
  fprintf(f, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>epoch</text>\n",
          x0 + w / 2, y0 + h + 32);
  for (int k = 0; k < ns; k++) {
    fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2'%s points='", s[k].color,
            s[k].dashed ? " stroke-dasharray='5,3'" : "");
    for (int i = 0; i < n; i++) {
      double v = get(&r[i], s[k].col) * scale;
      if (isfinite(v))
        fprintf(f, "%.1f,%.1f ", X(r[i].epoch), Y(v));
    }
    fputs("'/>\n", f);
    for (int i = 0; i < n; i++) {
      double v = get(&r[i], s[k].col) * scale;
      if (isfinite(v))
        fprintf(f,
                "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'><title>%s, epoch %g: %.4g%s</title>"
                "</circle>\n",
                X(r[i].epoch), Y(v), s[k].color, s[k].name, r[i].epoch, v, percent ? "%" : "");
    }
  }
#undef X
#undef Y
}

static void write_svg(const char *path, const char *model, const char *val_name,
                      const EpochRecord *r, int n) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    xc_die(NULL, "out of memory");
  fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='1320' height='380' "
             "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n");
  double last = n ? r[n - 1].epoch : 0;
  fprintf(f, "<text x='660' y='22' font-size='16' text-anchor='middle'>%s: %g epoch%s</text>\n",
          model, last, last == 1 ? "" : "s");
  const char *blue = "#1f77b4", *orange = "#ff7f0e";
  Series loss[] = {{"train", blue, 2, false}, {val_name, orange, 4, true}};
  Series acc[] = {{"train", blue, 3, false}, {val_name, orange, 5, true}};
  Series lr[] = {{"lr", "#2ca02c", 6, false}};
  plot(f, 70, 80, 340, 230, "loss", loss, 2, r, n, false);
  plot(f, 510, 80, 340, 230, "accuracy", acc, 2, r, n, true);
  plot(f, 950, 80, 340, 230, "learning rate", lr, 1, r, n, false);
  fputs("</svg>\n", f);
  fclose(f);
  if (!xc_replace_file(path, buf, len))
    xc_warn("check that the directory is writable", "cannot write %s: %s", path, strerror(errno));
  free(buf);
}

void xc_write_history(const char *csv_path, const char *svg_path, const char *model,
                      const char *val_name, const EpochRecord *r, int n) {
  if (n <= 0)
    return;
  write_csv(csv_path, r, n);
  write_svg(svg_path, model, val_name, r, n);
}
