// The main() of every Catch2 test program, for Catch2 2 and 3 alike.
#define CATCH_CONFIG_RUNNER  // Catch2 2: this file holds the implementation
#include "tests/support/catch.h"

int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
