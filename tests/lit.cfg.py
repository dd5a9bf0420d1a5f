# lit configuration for xentcc's golden tests: every .xir / .yaml / .test file
# under tests/ carries its own RUN: lines, checked with LLVM's FileCheck.
import os
import lit.formats

config.name = "xentcc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".xir", ".yaml", ".test"]
config.excludes = ["Inputs", "fuzz", "unit", "lit.cfg.py", "lit.site.cfg.py", "CMakeLists.txt"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.xentcc_build_dir, "tests", "lit-out")

config.environment["PATH"] = os.pathsep.join(
    [config.xentcc_bin_dir, config.llvm_bin_dir, config.environment.get("PATH", os.environ["PATH"])])
# In a sanitizer build the compiler turns its own leak reports off (ir/diag.c);
# the executables it generates are checked for leaks too. Any sanitizer
# report fails the test (-fno-sanitize-recover=all).
config.environment["UBSAN_OPTIONS"] = "print_stacktrace=1"
config.substitutions.append(("%models", os.path.join(config.xentcc_source_dir, "models")))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
# The sanitizer build's own tests (tests/codegen/sanitize.test).
if config.sanitize:
    config.available_features.add("sanitize")
# What a program linking a compiled model's library (--emit=lib) adds:
# OpenMP, libm and, in a sanitizer build, the sanitizers (runtime/CMakeLists.txt).
_lib_link = os.path.join(config.xentcc_build_dir, "lib", "xentcc_lib.link")
if os.path.exists(_lib_link):
    with open(_lib_link) as f:
        config.substitutions.append(("%libflags", " ".join(f.read().split())))
config.substitutions.append(("%builddir", config.xentcc_build_dir))
# tests/distributed: Open MPI's mpirun (scripts/setup.sh installs it; a test
# fails, never skips, without it), as root too, with more ranks than cores.
# In a sanitizer build the ranks are checked for memory errors but not for
# leaks: Open MPI's own allocations (in plugins it unloads at MPI_Finalize,
# so with no usable stack to suppress them by) would all be reported. The
# same executables run alone (every other test) are leak-checked as ever.
_mpirun = "mpirun --allow-run-as-root --oversubscribe"
if config.sanitize:
    _mpirun = "env ASAN_OPTIONS=detect_leaks=0 " + _mpirun
config.substitutions.append(("%mpirun", _mpirun))
