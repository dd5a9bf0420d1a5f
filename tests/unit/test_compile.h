// Running generated code in the unit tests (test_codegen.c, test_schedules.c):
// a private temporary directory per test, objects linked with the C compiler
// into a shared object beside a test xc_parallel_for, then opened with dlopen.
// Tools run from an argument vector (posix_spawnp), never through a shell.
#ifndef XENTCC_TEST_COMPILE_H
#define XENTCC_TEST_COMPILE_H

#include "ir.h"

#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <dirent.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

static char *tmpdir;   // this test's own directory (mkdtemp: private, unpredictable)
static char *pfor_obj; // our xc_parallel_for, linked into every shared object

// Runs argv[0] (looked up in PATH) with argv, and fails the test unless it exits 0.
static void run_tool(const char *const *argv) {
  pid_t pid;
  int err = posix_spawnp(&pid, argv[0], NULL, NULL, (char *const *)argv, environ);
  ck_assert_msg(err == 0, "cannot run %s: %s", argv[0], strerror(err));
  int status;
  while (waitpid(pid, &status, 0) < 0)
    ck_assert_msg(errno == EINTR, "waitpid: %s", strerror(errno));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return;
  char *cmd = xstrdup(argv[0]);
  for (int i = 1; argv[i]; i++)
    cmd = xformat("%s %s", cmd, argv[i]);
  ck_abort_msg("command failed (status %d): %s", status, cmd);
}

// rm -rf path: a directory's entries first; a symbolic link is removed,
// never followed (lstat).
static void remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        remove_tree(xformat("%s/%s", path, e->d_name));
    if (d)
      closedir(d);
  }
  if (remove(path) != 0)
    fprintf(stderr, "warning: cannot remove %s: %s\n", path, strerror(errno));
}

// xc_parallel_for and xc_team_for in three uneven chunks, the last one
// first: a kernel that assumed lo == 0, wrote outside [lo, hi) or depended
// on the order fails; a team of one thread (xc_parallel_step runs the step's
// team body once); and --profile's hooks, which do nothing here.
static void setup(void) {
  tmpdir = xstrdup("/tmp/xentcc-test-XXXXXX");
  ck_assert(mkdtemp(tmpdir));
  char *src = xformat("%s/pfor.c", tmpdir);
  FILE *f = fopen(src, "wx");
  ck_assert(f);
  fputs("#include <stdint.h>\n"
        "void xc_parallel_for(int64_t n, void (*body)(void *, int64_t, int64_t), void *ctx) {\n"
        "  int64_t a = n / 3, b = n - n / 4;\n"
        "  body(ctx, b, n);\n"
        "  body(ctx, a, b);\n"
        "  body(ctx, 0, a);\n"
        "}\n"
        "void xc_team_for(int64_t n, void (*body)(void *, int64_t, int64_t), void *ctx) {\n"
        "  xc_parallel_for(n, body, ctx);\n"
        "}\n"
        "void xc_parallel_step(void (*step)(void **), void **args) { step(args); }\n"
        "int xc_team_thread(void) { return 0; }\n"
        "void xc_team_barrier(void) {}\n"
        "void xc_prof_enter(int32_t id) {}\n"
        "void xc_prof_leave(int32_t id) {}\n",
        f);
  ck_assert(fclose(f) == 0);
  pfor_obj = xformat("%s/pfor.o", tmpdir);
  run_tool((const char *[]){"cc", "-c", "-fPIC", src, "-o", pfor_obj, NULL});
}

static void teardown(void) { remove_tree(tmpdir); }

static int linked; // names each shared object uniquely

// Links objs[0..n) (+ our parallel_for) into one shared object and opens it.
static void *load_objects(const char *const *objs, int n) {
  char *so = xformat("%s/lib%d.so", tmpdir, linked++);
  const char **argv = xcalloc(n + 6, sizeof *argv);
  int k = 0;
  argv[k++] = "cc";
  argv[k++] = "-shared";
  for (int i = 0; i < n; i++)
    argv[k++] = objs[i];
  argv[k++] = pfor_obj;
  argv[k++] = "-o";
  argv[k++] = so;
  run_tool(argv);
  free(argv);
  // Lazy: the training object's main() calls xc_train_main, which is not here.
  void *h = dlopen(so, RTLD_LAZY | RTLD_LOCAL);
  ck_assert_msg(h, "dlopen: %s", dlerror());
  return h;
}

static inline void *load_object(const char *obj) { return load_objects(&obj, 1); }

#endif
