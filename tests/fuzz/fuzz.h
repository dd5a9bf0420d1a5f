// What a harness in tests/fuzz/ defines, and what fuzz.c gives it. A harness
// is one file, fuzz_NAME.c, defining fuzz_one; tests/fuzz/CMakeLists.txt
// builds it with one line, and scripts/fuzz.sh NAME runs it.
#ifndef XENTCC_FUZZ_H
#define XENTCC_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdnoreturn.h>

// One input: size bytes, with a NUL after them. A user error (error_at,
// fatal) ends it cleanly; a crash, a sanitizer report or an abort() is a
// finding. Everything allocated during the call is freed afterwards.
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

#endif
