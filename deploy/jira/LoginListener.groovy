// jira-avatar-sync: ScriptRunner for Jira Data Center "Custom listener".
//
// Events: com.atlassian.jira.event.user.LoginEvent   (Administration > ScriptRunner > Listeners)
//
// Jira has no login webhook, so this listener sends one. It must never slow a login down:
//  - the POST is asynchronous (sendAsync) with short connect/request timeouts, and errors are
//    only logged;
//  - Jira publishes LoginEvent on every authenticated request (REST calls with Basic auth too),
//    so each user is posted at most once per POST_EVERY_MS from this node (the service
//    debounces as well);
//  - the service's own Jira account is skipped (its REST calls would trigger itself).
// The body is signed like Jira DC's own webhooks: X-Hub-Signature: sha256=<HMAC of the body>.
//
// Configure the three values below. Keep the secret out of the script: put it in a file only
// the Jira user can read, e.g. /var/atlassian/application-data/jira/avatar-sync.secret.

import com.atlassian.jira.component.ComponentAccessor
import com.atlassian.jira.event.user.LoginEvent
import groovy.json.JsonOutput
import org.apache.log4j.Logger

import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.charset.StandardCharsets
import java.time.Duration
import java.util.concurrent.ConcurrentHashMap

final String SERVICE_URL = "https://avatar-sync.example.com/webhooks/jira"
final String SECRET_FILE = "/var/atlassian/application-data/jira/avatar-sync.secret"
final String SERVICE_ACCOUNT = "avatar-sync"      // the Jira account jira-avatar-sync uses
final long POST_EVERY_MS = 60_000L

class AvatarSyncListenerState {
    static final HttpClient CLIENT = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build()
    static final ConcurrentHashMap<String, Long> LAST_POSTED = new ConcurrentHashMap<>()
    static volatile byte[] secret
}

def log = Logger.getLogger("jira-avatar-sync.listener")
def loginEvent = event as LoginEvent
String name = loginEvent?.user?.name
if (!name || name.equalsIgnoreCase(SERVICE_ACCOUNT)) {
    return
}
long now = System.currentTimeMillis()
Long last = AvatarSyncListenerState.LAST_POSTED.get(name)
if (last != null && now - last < POST_EVERY_MS) {
    return
}
AvatarSyncListenerState.LAST_POSTED.put(name, now)
if (AvatarSyncListenerState.LAST_POSTED.size() > 100_000) {
    AvatarSyncListenerState.LAST_POSTED.clear()
}

if (AvatarSyncListenerState.secret == null) {
    AvatarSyncListenerState.secret = new File(SECRET_FILE).text.trim().getBytes(StandardCharsets.UTF_8)
}
def appUser = ComponentAccessor.userManager.getUserByName(name)
byte[] body = JsonOutput.toJson([
    webhookEvent: "user_login",
    timestamp   : now,
    user        : [name: name, key: appUser?.key, emailAddress: appUser?.emailAddress,
                   displayName: appUser?.displayName],
]).getBytes(StandardCharsets.UTF_8)

Mac mac = Mac.getInstance("HmacSHA256")
mac.init(new SecretKeySpec(AvatarSyncListenerState.secret, "HmacSHA256"))
String signature = "sha256=" + mac.doFinal(body).encodeHex().toString()

HttpRequest request = HttpRequest.newBuilder(URI.create(SERVICE_URL))
    .timeout(Duration.ofSeconds(5))
    .header("Content-Type", "application/json")
    .header("X-Hub-Signature", signature)
    .POST(HttpRequest.BodyPublishers.ofByteArray(body))
    .build()

AvatarSyncListenerState.CLIENT.sendAsync(request, HttpResponse.BodyHandlers.discarding())
    .whenComplete { response, error ->
        if (error != null) {
            log.warn("jira-avatar-sync: login of ${name} not delivered: ${error.message}")
            AvatarSyncListenerState.LAST_POSTED.remove(name)   // try again on the next request
        } else if (response.statusCode() >= 300) {
            log.warn("jira-avatar-sync: login of ${name} answered ${response.statusCode()}")
        }
    }
