package grants

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxStatementInMessage keeps a message under Slack's 3,000-character
// limit for one text block.
const maxStatementInMessage = 1500

// SlackMessage is what the webhook POSTs: Slack's incoming-webhook JSON.
// Text is the whole message for receivers that ignore blocks (and for
// notifications); Blocks lay the same out for Slack.
type SlackMessage struct {
	Text   string       `json:"text"`
	Blocks []SlackBlock `json:"blocks,omitempty"`
}

// SlackBlock is a Block Kit block: a section with mrkdwn text or fields.
type SlackBlock struct {
	Type   string      `json:"type"`
	Text   *SlackText  `json:"text,omitempty"`
	Fields []SlackText `json:"fields,omitempty"`
}

// SlackText is a Block Kit text object.
type SlackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// ApproveCommand is the command that approves g, as messages print it.
func ApproveCommand(id string) string { return "sluice grants approve " + id }

// slackMessage announces a pending request. Everything the requester
// wrote is escaped, so a reason cannot mention @channel or forge a link.
func slackMessage(g Grant) SlackMessage {
	who := slackEsc(g.Requester.Subject)
	if g.Requester.OnBehalfOf != "" {
		who += " (on behalf of " + slackEsc(g.Requester.OnBehalfOf) + ")"
	}
	wants := "one statement"
	if len(g.Classes) > 0 {
		names := make([]string, len(g.Classes))
		for i, c := range g.Classes {
			names[i] = c.String()
		}
		wants = strings.Join(names, ", ")
	}
	approve, deny := ApproveCommand(g.ID), "sluice grants deny "+g.ID
	text := fmt.Sprintf("Grant request %s: %s asks for %s on %s for %s. Reason: %s. To approve: `%s` (or `%s`).",
		g.ID, who, wants, slackEsc(g.Target), g.Duration, slackEsc(g.Reason), approve, deny)

	fields := []SlackText{
		mrkdwn("*Requester*\n" + who),
		mrkdwn("*Target*\n" + slackEsc(g.Target)),
		mrkdwn("*Access*\n" + wants),
		mrkdwn("*Duration*\n" + g.Duration.String()),
	}
	if g.Requester.Client != "" && g.Requester.Client != g.Requester.Subject {
		fields = append(fields, mrkdwn("*Client*\n"+slackEsc(g.Requester.Client)))
	}
	fields = append(fields, mrkdwn("*Decide before*\n"+g.PendingExpiresAt.UTC().Format("2006-01-02 15:04 MST")))
	blocks := []SlackBlock{
		{Type: "section", Text: ptr(mrkdwn(fmt.Sprintf("*Grant request* `%s` needs an approver", g.ID)))},
		{Type: "section", Fields: fields},
		{Type: "section", Text: ptr(mrkdwn("*Reason*\n" + slackEsc(g.Reason)))},
	}
	if g.Statement != "" {
		blocks = append(blocks, SlackBlock{Type: "section", Text: ptr(mrkdwn("*Statement*\n```" + codeEsc(g.Statement) + "```"))})
		text += "\nStatement: " + codeEsc(g.Statement)
	}
	blocks = append(blocks, SlackBlock{Type: "section", Text: ptr(mrkdwn(fmt.Sprintf("Approve: `%s`\nDeny: `%s`", approve, deny)))})
	return SlackMessage{Text: text, Blocks: blocks}
}

func mrkdwn(s string) SlackText { return SlackText{Type: "mrkdwn", Text: s} }

func ptr[T any](v T) *T { return &v }

// esc escapes what Slack's mrkdwn gives meaning to: &, < and > (links,
// mentions) per Slack's "escaping text" rules.
func slackEsc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// codeEsc escapes a statement for a code block and shortens it.
func codeEsc(s string) string {
	if len(s) > maxStatementInMessage {
		n := maxStatementInMessage
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return slackEsc(strings.ReplaceAll(s, "```", "'''"))
}
