// Helpers the Check suites share: run a suite as main() does, read a whole
// file, and run a function in a child process with its stderr captured,
// for code that reports and exits (error_at, xc_die) or prints warnings a
// test wants to read. Header-only: every suite is one translation unit and
// links neither ir/ nor runtime/ for these.
#ifndef XENTCC_TESTS_CAPTURE_H
#define XENTCC_TESTS_CAPTURE_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

// main()'s end: runs every test of s; exit status 1 when one failed.
static inline int run_suite(Suite *s) {
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}

// The file's bytes plus a '\0' ("" when it cannot be read); *len, if asked
// for, gets the byte count.
static inline char *read_all(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  long n = 0;
  if (f && fseek(f, 0, SEEK_END) == 0)
    n = ftell(f);
  char *s = malloc(n > 0 ? n + 1 : 1);
  ck_assert(s);
  if (f) {
    rewind(f);
    n = (long)fread(s, 1, n > 0 ? n : 0, f);
    fclose(f);
  }
  s[n] = '\0';
  if (len)
    *len = n;
  return s;
}

// Runs fn(arg) in a child whose stderr goes to a temporary file; returns that
// text and sets *status to the exit status (0 when fn returns, 128 + signal
// when it is killed). Fork before the suite starts OpenMP threads: a child
// forked after that can hang in libgomp.
static inline char *run_capturing_stderr(void (*fn)(void *), void *arg, int *status) {
  char path[] = "/tmp/xentcc-test-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  fflush(NULL);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fd, 2);
    fn(arg);
    _exit(0);
  }
  int ws;
  waitpid(pid, &ws, 0);
  *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
  char *text = read_all(path, NULL);
  close(fd);
  unlink(path);
  return text;
}

#endif
