// Runs a LoginListener.groovy as ScriptRunner does: compiled once, then run once per LoginEvent
// with `event` bound (so its static state persists between events, as in Jira).
// Usage: groovy -cp stubs drive.groovy LISTENER GAP_MS WAIT_MS USER...
// GAP_MS between two logins, WAIT_MS after the last.
import com.atlassian.jira.event.user.LoginEvent

def shell = new GroovyShell(this.class.classLoader)
Class listener = shell.parse(new File(args[0])).getClass()
long gapMs = args[1] as long, waitMs = args[2] as long
args.drop(3).eachWithIndex { String name, int i ->
    if (i > 0) {
        Thread.sleep(gapMs)
    }
    Script script = listener.getDeclaredConstructor().newInstance()
    script.binding = new Binding([event: new LoginEvent(name)])
    script.run()
    println "ran ${name}"
}
Thread.sleep(waitMs)  // the POSTs are asynchronous: let them land before the JVM exits
