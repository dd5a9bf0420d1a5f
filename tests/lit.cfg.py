# lit configuration for xentcc's golden tests: every .xir / .yaml / .test file
# under tests/ carries its own RUN: lines, checked with LLVM's FileCheck.
import os
import lit.formats

config.name = "xentcc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".xir", ".yaml", ".test"]
config.excludes = ["Inputs", "unit", "lit.cfg.py", "lit.site.cfg.py", "CMakeLists.txt"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.xentcc_build_dir, "tests", "lit-out")

config.environment["PATH"] = os.pathsep.join(
    [config.xentcc_bin_dir, config.llvm_bin_dir, config.environment.get("PATH", os.environ["PATH"])])
# The compiler never frees its IR (a run is short), so leak reports are noise.
config.environment["ASAN_OPTIONS"] = "detect_leaks=0"
config.substitutions.append(("%models", os.path.join(config.xentcc_source_dir, "models")))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
