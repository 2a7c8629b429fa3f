# Python tests: every folder registers them with splitlearnd_add_python_tests, and the
# interpreter and the modules it can import are checked once, here.
#
#   splitlearnd_add_python_tests(PREFIX <subject> TESTS <name>...
#       [DIRECTORY <dir>]      where test_<name>.py lies and runs (default: the calling
#                              folder; a relative path is relative to it)
#       [COMMAND <arg>...]     run `python <arg>...` instead of `python -m unittest -v
#                              test_<name>.py`
#       [NEEDS <need>...]      Python modules the tests import, and `stubs` for the
#                              generated gRPC stubs; if one is missing, the tests are not
#                              registered, with a warning that says which
#       [TIMEOUT <s>]          default 600
#       [ENV <VAR=value>...] [LABELS <label>...])
#
# registers the ctest test <PREFIX>_<name> for each name, labelled python and <PREFIX>,
# with the environment of SPLITLEARND_TEST_ENV (tests/CMakeLists.txt) and PYTHONPATH
# naming tests/support, where splitlearnd_launcher.py starts the daemon.
set(SPLITLEARND_TEST_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python interpreter of the Python tests (Debian's: python3-torch, python3-grpcio, python3-numpy, python3-yaml)")

execute_process(
  COMMAND ${SPLITLEARND_TEST_PYTHON} -c
          "import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n    except Exception:\n        continue\n    print(m)"
          torch grpc numpy yaml google.protobuf
  OUTPUT_VARIABLE _splitlearnd_python_found ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "\n" ";" SPLITLEARND_TEST_PYTHON_MODULES "${_splitlearnd_python_found}")

function(splitlearnd_add_python_tests)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "PREFIX;DIRECTORY;TIMEOUT" "TESTS;COMMAND;NEEDS;ENV;LABELS")
  if(NOT arg_PREFIX OR NOT arg_TESTS OR arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "splitlearnd_add_python_tests: PREFIX and TESTS are required "
                        "(unknown arguments: ${arg_UNPARSED_ARGUMENTS})")
  endif()
  set(names)
  foreach(name IN LISTS arg_TESTS)
    list(APPEND names ${arg_PREFIX}_${name})
  endforeach()

  set(missing)
  foreach(need IN LISTS arg_NEEDS)
    if(need STREQUAL "stubs")
      if(NOT TARGET splitlearnd_python_stubs)
        list(APPEND missing "the generated Python gRPC stubs (grpc_python_plugin not found)")
      endif()
    elseif(NOT need IN_LIST SPLITLEARND_TEST_PYTHON_MODULES)
      list(APPEND missing "Python module ${need}")
    endif()
  endforeach()
  if(missing)
    list(JOIN names ", " names_text)
    list(JOIN missing ", " missing_text)
    message(WARNING "${names_text} not registered: ${SPLITLEARND_TEST_PYTHON} lacks ${missing_text} "
                    "(Debian: python3-torch python3-grpcio python3-numpy python3-yaml)")
    return()
  endif()

  if(NOT arg_DIRECTORY)
    set(directory ${CMAKE_CURRENT_SOURCE_DIR})
  elseif(IS_ABSOLUTE ${arg_DIRECTORY})
    set(directory ${arg_DIRECTORY})
  else()
    set(directory ${CMAKE_CURRENT_SOURCE_DIR}/${arg_DIRECTORY})
  endif()
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 600)
  endif()
  set(environment ${SPLITLEARND_TEST_ENV} PYTHONDONTWRITEBYTECODE=1
      PYTHONPATH=${PROJECT_SOURCE_DIR}/tests/support ${arg_ENV})
  set(labels python ${arg_PREFIX} ${arg_LABELS})
  list(REMOVE_DUPLICATES labels)

  foreach(name IN LISTS arg_TESTS)
    if(arg_COMMAND)
      set(command ${arg_COMMAND})
    else()
      set(command -m unittest -v test_${name}.py)
    endif()
    add_test(NAME ${arg_PREFIX}_${name} COMMAND ${SPLITLEARND_TEST_PYTHON} ${command} WORKING_DIRECTORY ${directory})
    set_tests_properties(${arg_PREFIX}_${name} PROPERTIES
      ENVIRONMENT "${environment}" TIMEOUT ${arg_TIMEOUT} LABELS "${labels}")
  endforeach()
endfunction()
