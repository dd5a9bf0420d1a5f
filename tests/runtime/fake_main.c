// main() of the fake model's executables, as generated objects define it:
// it hands over to the runtime's training or evaluation main.
int FAKE_MAIN(int argc, char **argv);

int main(int argc, char **argv) { return FAKE_MAIN(argc, argv); }
