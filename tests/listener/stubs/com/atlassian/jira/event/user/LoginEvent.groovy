package com.atlassian.jira.event.user

// Stand-in for Jira's LoginEvent: getUser() gives the ApplicationUser (here only its name).
class LoginEvent {
    final Map user

    LoginEvent(String name) {
        user = [name: name]
    }
}
