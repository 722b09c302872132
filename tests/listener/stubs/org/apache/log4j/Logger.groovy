package org.apache.log4j

// Stand-in for log4j 1's Logger (Jira's): messages go to stderr for the test to read.
class Logger {
    private final String name

    private Logger(String name) {
        this.name = name
    }

    static Logger getLogger(String name) {
        new Logger(name)
    }

    void warn(Object message) {
        System.err.println("WARN ${name}: ${message}")
    }
}
