// What a harness in tests/fuzz/ defines, and what fuzz.c gives it. A harness
// is one file, fuzz_NAME.c, defining fuzz_one; tests/fuzz/CMakeLists.txt
// builds it with one line, and scripts/fuzz.sh NAME runs it.
#ifndef XENTCC_FUZZ_H
#define XENTCC_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdnoreturn.h>

// One input: size bytes, with a NUL after them. A user error (error_at,
// fatal, xc_die) ends it cleanly; a crash, a sanitizer report or an abort()
// is a finding. Everything allocated during the call is freed afterwards,
// and every stream it opened (fopen, fdopen, gzopen) is closed.
void fuzz_one(const char *data, size_t size);

// Optional, once at start-up, before memory is tracked: fill caches that
// live for the whole process.
void fuzz_init(void);

// Ends the input as a user error: longjmps back to the driver. fuzz.c makes
// the compiler's error_at and fatal call it (diag_set_exit_hook); a harness
// of a library with its own error exit (the runtime's xc_die) registers it
// with that library's hook in fuzz_init.
noreturn void fuzz_user_error(void);

// Makes a user error from now on a finding: for checks of properties that
// must hold (print(parse(text)) parses back), not for rejecting input.
void fuzz_errors_are_bugs(void);

// For harnesses of the runtime, in fuzz_init. Inputs are any bytes (by
// default, inputs with a NUL byte are skipped: the compiler refuses them
// before parsing).
void fuzz_binary_input(void);
// What an input that ended without a user error leaves allocated or open is
// a finding (LeakSanitizer reports the blocks), for code that frees what it
// allocates; what a user error leaves is freed, as exit(1) would.
void fuzz_leaks_are_bugs(void);

// A file of the input's bytes, for loaders that take a path: kept in memory
// (memfd_create), reached through a symbolic link NAME in a private
// directory (mkdtemp) removed at exit. fuzz_file in fuzz_init, then
// fuzz_file_write for each input.
typedef struct {
  const char *path;
  int fd;
} FuzzFile;
FuzzFile fuzz_file(const char *name);
void fuzz_file_write(FuzzFile f, const void *data, size_t size);

#endif
