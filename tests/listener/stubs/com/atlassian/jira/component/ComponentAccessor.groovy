package com.atlassian.jira.component

// Stand-in for Jira's ComponentAccessor: only what LoginListener.groovy calls.
class ComponentAccessor {
    static getUserManager() {
        [getUserByName: { String name ->
            [key: "JIRAUSER-" + name, emailAddress: name + "@example.com", displayName: name.capitalize()]
        }]
    }
}
